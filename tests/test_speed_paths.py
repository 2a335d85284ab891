"""The speed paths of issue 12 compute the same thing as the plain ones: the runtime forms of the filters (used
while exporting), the block means, the engine's thread setting, and the compiled torch graph (no recompilation
after the first frame, selections identical to eager). No timing is asserted here: speed is the bench's job."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arr_coc_stream import Engine, EngineConfig, realizing, texture
from arr_coc_stream.backends import intra_op_threads
from arr_coc_stream.bench import selection_agreement
from arr_coc_stream.errors import ConfigError
from arr_coc_stream.realizing import coarse_flow


def _images(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 2, 48, 64, generator=g)


def test_max_filter_runtime_form_is_the_same_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _images()
    eager = texture.max_filter(x, 5)
    monkeypatch.setattr(texture, "for_runtime", lambda: True)
    runtime = texture.max_filter(x, 5)
    assert torch.equal(eager, runtime)
    # and it is a maximum filter: the centre 5x5 window of a single spike lights up, nothing else
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    out = texture.max_filter(spike, 5)
    assert out[0, 0, 2:7, 2:7].min() == 1.0 and out.sum() == 25.0


def test_derivatives_are_sobel_and_laplacian() -> None:
    ramp = torch.arange(16.0).repeat(16, 1)[None, None] / 16.0  # +1/16 per pixel along x
    d = texture.derivatives(ramp)[0, :, 4:-4, 4:-4]
    torch.testing.assert_close(d[0], torch.full_like(d[0], 1 / 16))  # intensity per pixel
    assert d[1].abs().max() < 1e-6 and d[2].abs().max() < 1e-6
    bowl = (torch.arange(16.0)[:, None] ** 2 + torch.arange(16.0)[None, :] ** 2)[None, None]
    lap = texture.derivatives(bowl)[0, 2, 4:-4, 4:-4]  # x^2 + y^2: Laplacian 4 everywhere
    torch.testing.assert_close(lap, torch.full_like(lap, 4.0))


@pytest.mark.parametrize("block", [8, 4, (4, 8)])
def test_to_grid_is_the_block_mean(block: int | tuple[int, int]) -> None:
    x = _images(2)
    k = (block, block) if isinstance(block, int) else block
    torch.testing.assert_close(texture.to_grid(x, block), F.avg_pool2d(x, k), atol=1e-6, rtol=1e-5)


def test_flow_finds_a_known_shift_in_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(3)
    prev = torch.rand(1, 1, 64, 64, generator=g)
    cur = torch.roll(prev, shifts=(1, 2), dims=(2, 3))  # content moved 2 px right, 1 px down
    eager = coarse_flow(cur, prev, (32, 32), 4)
    flow = eager[0, :, 4:-4, 4:-4]  # cells of 2 px: (1.0, 0.5) cells
    assert abs(float(flow[0].median()) - 1.0) < 0.05 and abs(float(flow[1].median()) - 0.5) < 0.05
    monkeypatch.setattr(realizing, "for_runtime", lambda: True)
    torch.testing.assert_close(coarse_flow(cur, prev, (32, 32), 4), eager, atol=1e-5, rtol=1e-4)


def test_thread_count_is_set_for_the_engine_and_restored_for_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", _fake_threads.get)
    monkeypatch.setattr(torch, "set_num_threads", _fake_threads.set)
    _fake_threads.set(2)  # the caller's count: two, whatever this machine's is
    before = torch.get_num_threads()
    seen: list[int] = []
    engine = Engine(EngineConfig(threads=1))
    original = engine.runner.module.forward

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    engine.runner.module.forward = spy
    before_frame = engine.head.before_frame

    def spy_head(*args, **kwargs):  # outside the graph call: the whole frame runs on the engine's threads
        seen.append(torch.get_num_threads())
        return before_frame(*args, **kwargs)

    engine.head.before_frame = spy_head
    engine.process(np.zeros((64, 64, 3), np.uint8), time=0.0)
    assert seen == [1, 1]
    assert torch.get_num_threads() == before
    with intra_op_threads(None):
        assert torch.get_num_threads() == before


class _FakeThreads:
    """Stands in for torch's process-wide thread count, so the test neither depends on nor changes it."""

    def __init__(self) -> None:
        self.n = 1

    def get(self) -> int:
        return self.n

    def set(self, n: int) -> None:
        self.n = n


_fake_threads = _FakeThreads()


def test_thread_count_is_restored_when_the_graph_raises() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), intra_op_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_thread_counts_are_config_errors_naming_threads(bad: object) -> None:
    with pytest.raises(ConfigError, match="threads"):
        EngineConfig(threads=bad)  # type: ignore[arg-type]


def test_compile_is_refused_for_file_backends(tmp_path) -> None:
    from arr_coc_stream.export import export_onnx

    path = export_onnx(EngineConfig(grid=(8, 8), k=16, max_foveal=4), tmp_path / "g.onnx").path
    with pytest.raises(ConfigError, match="compile"):
        Engine(backend="onnxruntime", model=path, compile=True)


@pytest.mark.slow
def test_compiled_graph_compiles_once_and_selects_as_eager() -> None:
    """30 frames of a moving scene with a cut: one dynamo graph, no recompilation, the eager selections."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    from arr_coc_stream.synth import moving_object

    frames = moving_object("red", n_frames=30).frames
    frames[15:] = [np.ascontiguousarray(f[::-1, ::-1]) for f in frames[15:]]  # a cut at frame 15
    counters.clear()
    compiled, eager = Engine(compile=True, query="red"), Engine(query="red")
    picked: tuple[list[set[int]], list[set[int]]] = ([], [])
    cuts = []
    for i, f in enumerate(frames):
        a, b = compiled.process(f, time=i / 25), eager.process(f, time=i / 25)
        picked[0].append(set(a.indices[a.valid].tolist()))
        picked[1].append(set(b.indices[b.valid].tolist()))
        cuts.append((a.cut, b.cut))
        np.testing.assert_allclose(a.relevance, b.relevance, atol=1e-3)  # inductor fuses: float rounding differs
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["recompiles"] and not counters["graph_break"], (
        dict(counters["recompiles"]),
        dict(counters["graph_break"]),
    )
    assert selection_agreement(*picked) >= 0.99
    assert [a for a, _ in cuts] == [b for _, b in cuts] and cuts[15][0]
    assert compiled.runner.compile_s is not None and compiled.runner.compile_s > 0
    assert "graph (compiled)" in a.timings and "texture" not in a.timings


def test_busy_processes_run_during_the_block_and_are_gone_after() -> None:
    from arr_coc_stream.bench import busy_processes

    with busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.returncode is not None for p in procs)


def test_load_table_compares_quiet_and_loaded_fps_of_one_run() -> None:
    from arr_coc_stream.bench import load_table

    def rows(e2e: list[str], decode: str) -> list[list[str]]:
        return [["fps end to end", *e2e], ["fps decode only (PyAV, resized by the decoder)", decode, decode]]

    header, table = load_table(
        rows(["60.0", "90.0"], "120.0"), rows(["30.0", "45.0"], "60.0"), ["torch", "onnxruntime"], 2
    )
    assert "2 busy processes" in header[2]
    assert table[0][:4] == ["decode only", "120.0", "60.0", "2.00"]
    assert table[1] == ["torch", "60.0", "30.0", "2.00", "0.50"]
    assert table[2] == ["onnxruntime", "90.0", "45.0", "2.00", "0.75"]


def test_inputs_of_a_compiled_graph_get_the_strides_of_a_fresh_tensor() -> None:
    from arr_coc_stream.backends import _standard_strides

    fresh = torch.zeros(1, 32, 32)
    assert _standard_strides(fresh) is fresh  # no copy when nothing is to fix
    channel = torch.arange(36 * 32 * 32.0).reshape(1, 36, 32, 32)[:, 3]  # a texture channel fed back as state
    fixed = _standard_strides(channel)
    assert channel.stride() == (36864, 32, 1) and fixed.stride() == (1024, 32, 1) and torch.equal(fixed, channel)
