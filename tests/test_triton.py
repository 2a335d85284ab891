"""The Triton model repository (issue 14, part 2), checked without a server.

- The written ``config.pbtxt`` parses as Triton's ``ModelConfig`` (tritonclient's protobuf; unknown fields and
  values are refused), and every name, dtype and dim is cross-checked against the ONNX file it serves, with the
  server's own rules for sequence models (the START control as a [B, 1] input of its dtype, states declared only
  as states, initial states of the state's shape).
- Triton's sequence batcher (direct strategy, implicit state) emulated over onnxruntime, reading that config:
  three clips' requests interleaved, streams joining and leaving, a new sequence in a freed slot; each stream's
  results equal ``run()`` on its clip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import arr_coc_stream as acs
from arr_coc_stream import synth
from arr_coc_stream.errors import ConfigError, ModelError
from arr_coc_stream.model_file import read_model
from arr_coc_stream.query import build_head
from arr_coc_stream.sources import open_source
from arr_coc_stream.triton import CONTROL, TritonConfig, TritonModel, write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] (dev extra)")
text_format = pytest.importorskip("google.protobuf.text_format")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "frame_graph_256x256_g32x32_c8_k200_b1.onnx"
OPTIONS = {"grid": (16, 16), "k": 48, "max_foveal": 6}
TRITON_NP = {
    model_config_pb2.TYPE_FP32: np.float32,
    model_config_pb2.TYPE_UINT8: np.uint8,
    model_config_pb2.TYPE_BOOL: np.bool_,
    model_config_pb2.TYPE_INT32: np.int32,
    model_config_pb2.TYPE_INT64: np.int64,
}
ONNX_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_}
ONNX_NP.update({onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64})


def _parse(model: TritonModel):
    return text_format.Parse(model.config.read_text(), model_config_pb2.ModelConfig())


def _onnx_io(path: Path) -> dict[str, tuple[type, list]]:
    """name -> (numpy dtype, dims with the batch as 'batch')."""
    graph = onnx.load(str(path)).graph
    return {
        v.name: (
            ONNX_NP[v.type.tensor_type.elem_type],
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in (*graph.input, *graph.output)
    }


def test_repository_parses_and_matches_the_onnx_graph(tmp_path: Path) -> None:
    (model,) = write_repository(DEFAULT, tmp_path / "repo", TritonConfig(name="arr_coc_stream", idle_timeout_s=5))
    assert model.folder == tmp_path / "repo" / "arr_coc_stream" and model.model.name == "model.onnx"
    assert model.model.read_bytes() == DEFAULT.read_bytes()
    cfg = _parse(model)
    io = _onnx_io(model.model)
    spec = read_model(DEFAULT).spec
    assert cfg.name == "arr_coc_stream" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == read_model(DEFAULT).batch_max

    def check(entries, names: list[str]) -> None:
        assert [e.name for e in entries] == names
        for e in entries:
            dtype, dims = io[e.name]
            assert TRITON_NP[e.data_type] is dtype, e.name
            assert dims[0] == "batch" and list(e.dims) == dims[1:], (e.name, list(e.dims), dims)

    # the control and the states are served by the sequence batcher, never listed as plain inputs or outputs
    check(cfg.input, [t.name for t in spec.inputs if t.name != CONTROL])
    check(cfg.output, [t.name for t in spec.outputs])
    seq = cfg.sequence_batching
    assert seq.WhichOneof("strategy_choice") == "direct"
    assert seq.max_sequence_idle_microseconds == 5_000_000, "a camera may pause for a second"
    (control,) = seq.control_input
    (kind,) = control.control
    assert (
        control.name == CONTROL and kind.kind == model_config_pb2.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
    )
    assert list(kind.bool_false_true) == [False, True] and io[CONTROL] == (np.bool_, ["batch", 1]), "[B, 1], bool"
    assert [(s.input_name, s.output_name) for s in seq.state] == [(s.in_name, s.out_name) for s in spec.states]
    for s in seq.state:
        dtype, dims = io[s.input_name]
        assert io[s.output_name] == (dtype, dims) and TRITON_NP[s.data_type] is dtype
        assert dims[0] == "batch" and list(s.dims) == dims[1:] and len(s.dims) >= 1, s.input_name
        (init,) = s.initial_state
        assert init.zero_data and init.name and init.data_type == s.data_type and list(init.dims) == list(s.dims)
    listed = {e.name for e in (*cfg.input, *cfg.output)} | {CONTROL}
    listed |= {n for s in seq.state for n in (s.input_name, s.output_name)}
    assert listed == set(io), "every ONNX input and output is accounted for, once"


def test_the_config_parser_refuses_what_triton_would(tmp_path: Path) -> None:
    """The parse is a real check: a typo'd field or enum value in the written text is an error."""
    (model,) = write_repository(DEFAULT, tmp_path)
    text = model.config.read_text()
    for bad in (text.replace("zero_data", "zero_dat"), text.replace("TYPE_FP32", "TYPE_FLOAT32", 1)):
        with pytest.raises(text_format.ParseError):
            text_format.Parse(bad, model_config_pb2.ModelConfig())


def test_tensorrt_plan_variant_and_bad_input(tmp_path: Path) -> None:
    engine = tmp_path / "frame_graph.engine"
    engine.write_bytes(b"serialized TensorRT engine")
    meta = json.loads(DEFAULT.with_suffix(".json").read_text())
    engine.with_suffix(".engine.json").write_text(json.dumps({"model": meta, "tensorrt": {"version": "10.13"}}))
    (model,) = write_repository(engine, tmp_path / "repo")
    cfg = _parse(model)
    assert cfg.platform == "tensorrt_plan" and model.model.name == "model.plan"
    assert model.model.read_bytes() == b"serialized TensorRT engine"
    assert [e.name for e in cfg.input] == [t.name for t in read_model(DEFAULT).spec.inputs if t.name != CONTROL]
    with pytest.raises(ModelError, match="does not exist"):
        write_repository(tmp_path / "missing.onnx", tmp_path / "repo")
    with pytest.raises(ConfigError, match="idle_timeout_s"):
        TritonConfig(idle_timeout_s=0)
    with pytest.raises(ConfigError, match="plain folder name"):
        TritonConfig(name="../up")


def test_export_command_writes_a_repository(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "arr_coc_stream.cli", "export", "--engine", str(tmp_path / "x.engine")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--engine is for --triton" in out.stderr
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    meta = json.loads(DEFAULT.with_suffix(".json").read_text())
    engine.with_suffix(".engine.json").write_text(json.dumps({"model": meta, "tensorrt": {"version": "10.13"}}))
    out = subprocess.run(
        [sys.executable, "-m", "arr_coc_stream.cli", "export", "--triton", str(tmp_path / "repo"), "--engine", engine],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "tritonserver --model-repository" in out.stdout
    assert (tmp_path / "repo" / "m" / "1" / "model.plan").read_bytes() == b"plan"


@dataclass
class Request:
    """One inference request of a sequence, as a Triton client sends it."""

    sequence: int
    start: bool
    end: bool
    inputs: dict[str, np.ndarray]  # per stream, no batch dimension


class SequenceBatcher:
    """Triton's sequence batcher over onnxruntime, configured only from ``config.pbtxt``: the direct strategy (a
    sequence takes the lowest free batch slot on START and keeps it until END), implicit state (a sequence's
    ``_in`` is its previous request's ``_out``, the initial state on START), the START control set on a
    sequence's first request, and slots without a request in a batch filled with zeros (their outputs dropped)."""

    def __init__(self, model: TritonModel) -> None:
        import onnxruntime as ort

        cfg = _parse(model)
        self.session = ort.InferenceSession(str(model.model), providers=["CPUExecutionProvider"])
        self.slots_max = cfg.max_batch_size
        (control,) = cfg.sequence_batching.control_input
        self.control = control.name
        self.false_true = list(control.control[0].bool_false_true)
        self.inputs = {e.name: (TRITON_NP[e.data_type], tuple(e.dims)) for e in cfg.input}
        self.outputs = [e.name for e in cfg.output]
        self.states = [
            (s.input_name, s.output_name, TRITON_NP[s.data_type], tuple(s.dims)) for s in cfg.sequence_batching.state
        ]
        self.slot: dict[int, int] = {}
        self.state: dict[int, dict[str, np.ndarray]] = {}
        self.batches: list[int] = []

    def execute(self, requests: list[Request]) -> dict[int, dict[str, np.ndarray]]:
        for r in requests:
            if r.start and r.sequence not in self.slot:
                self.slot[r.sequence] = min(set(range(self.slots_max)) - set(self.slot.values()))
            assert r.sequence in self.slot, "Triton refuses a sequence's first request without START"
        by_slot = {self.slot[r.sequence]: r for r in requests}
        batch = max(by_slot) + 1
        self.batches.append(batch)
        feed = {name: np.zeros((batch, *dims), dtype) for name, (dtype, dims) in self.inputs.items()}
        feed[self.control] = np.full((batch, 1), self.false_true[0])
        for in_name, _, dtype, dims in self.states:
            feed[in_name] = np.zeros((batch, *dims), dtype)
        for i, r in by_slot.items():
            for name in self.inputs:
                feed[name][i] = r.inputs[name]
            feed[self.control][i] = self.false_true[1] if r.start else self.false_true[0]
            for in_name, *_ in self.states:
                if not r.start:
                    feed[in_name][i] = self.state[r.sequence][in_name]
        names = [o.name for o in self.session.get_outputs()]
        out = dict(zip(names, self.session.run(None, feed)))
        results = {}
        for i, r in by_slot.items():
            self.state[r.sequence] = {in_name: out[out_name][i] for in_name, out_name, *_ in self.states}
            results[r.sequence] = {name: out[name][i] for name in self.outputs}
            if r.end:
                del self.slot[r.sequence], self.state[r.sequence]
        return results


@pytest.mark.slow
def test_sequence_batcher_emulation_matches_run_per_stream(tmp_path: Path) -> None:
    clips = {
        "red": synth.moving_object("red", n_frames=10, size=(128, 128), object_px=24, photo="chelsea"),
        "blue": synth.moving_object("blue", n_frames=10, size=(128, 128), object_px=24, photo="astronaut", seed=1),
        "cuts": synth.cuts_clip(n_frames=10, size=(128, 128)),
    }
    paths = {key: synth.write_clip(clip, tmp_path / f"{key}.mp4") for key, clip in clips.items()}
    onnx_path = acs.export_onnx(acs.EngineConfig(**OPTIONS), tmp_path / "g.onnx", batch_max=3).path
    (model,) = write_repository(onnx_path, tmp_path / "repo")
    config = read_model(onnx_path).resolve(None, {})
    head = build_head(config)
    # sequences: (id, clip, query, first step). 'red' ends after its 6th frame; sequence 4 ('red' again, another
    # query) starts in its freed slot; 'cuts' sends nothing at step 3 (a camera that skipped a frame)
    sequences = [(1, "red", "red", 0), (2, "blue", "blue", 2), (3, "cuts", None, 0), (4, "red", "text", 7)]
    frames = {key: list(open_source(path, size=config.work_size)) for key, path in paths.items()}
    lengths = {1: 6, 2: 10, 3: 10, 4: 3}

    def client_inputs(frame, last_time: float | None, query: str | None) -> dict[str, np.ndarray]:
        dt = 0.0 if last_time is None else frame.time - last_time
        encoded = {name: t[0].numpy() for name, t in head.stack([head.encode(query)]).items()}
        return {"frame": frame.rgb, "dt": np.array([dt], np.float32), **encoded}

    batcher = SequenceBatcher(model)
    got: dict[int, list[dict[str, np.ndarray]]] = {seq: [] for seq, *_ in sequences}
    for step in range(12):
        requests = []
        for seq, key, query, first in sequences:
            n = len(got[seq])
            if step < first or n >= lengths[seq] or (seq == 3 and step == 3):
                continue
            last = frames[key][n - 1].time if n else None
            inputs = client_inputs(frames[key][n], last, query)
            requests.append(Request(seq, start=n == 0, end=n == lengths[seq] - 1, inputs=inputs))
        for seq, out in batcher.execute(requests).items():
            got[seq].append(out)
    assert max(batcher.batches) == 3 and batcher.slot == {}, "three slots in use at once; all sequences ended"

    for seq, key, query, _ in sequences:
        want = acs.run(paths[key], query=query, backend="onnxruntime", model=onnx_path, max_frames=lengths[seq])
        assert len(got[seq]) == len(want) == lengths[seq]
        for i, (g, w) in enumerate(zip(got[seq], want)):
            np.testing.assert_allclose(g["relevance"], w.relevance, atol=1e-5, err_msg=f"sequence {seq} frame {i}")
            assert g["indices"][g["valid"]].tolist() == w.selected.tolist(), (seq, i)
            assert bool(g["cut"][0]) == w.cut and np.array_equal(g["budgets"], w.budgets), (seq, i)
    assert any(bool(o["cut"][0]) for o in got[3]), "the cuts clip's cut is found through the batcher"
