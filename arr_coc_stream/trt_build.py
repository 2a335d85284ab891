"""Build a TensorRT engine from an exported ONNX file (DESIGN.md section 8); ``export/build_trt.py`` wraps it.

TensorRT 10.x and 11.x build **strongly typed** networks: 11.x removed ``BuilderFlag.FP16``/``INT8`` and
``platform_has_fast_fp16`` and types every network strongly; 10.x gets the ``STRONGLY_TYPED`` creation flag. So
the precision comes from the ONNX file given (``<name>.onnx`` in FP32, ``<name>_fp16.onnx`` in float16), never
from a builder flag. INT8 would need explicit Q/DQ nodes in the ONNX, which this graph does not have: it is refused.

The build uses one optimization profile for the batch (min 1, opt = max = the model's ``batch_max``), a workspace
limit through ``set_memory_pool_limit``, and a timing cache that is read when present and saved after the build.
Beside ``<name>.engine`` it writes ``<name>.engine.json``: the model's metadata plus the TensorRT version and the
GPU's compute capability, which the TensorRT backend checks before loading (an engine is tied to both).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .backends import TensorRTUnavailable, import_tensorrt, tensorrt_major
from .errors import ConfigError, ModelError
from .model_file import companion_path, engine_json_path, read_model

__all__ = [
    "BuildConfig",
    "BuildResult",
    "TensorRTUnavailable",
    "build_all",
    "build_engine",
    "gpu_info",
    "import_tensorrt",
]

DEFAULT_WORKSPACE_MIB = 4096
TIMING_CACHE_NAME = "tensorrt.timing.cache"


@dataclass(frozen=True)
class BuildConfig:
    """One engine build.

    Attributes:
        onnx: the exported ``.onnx`` file (FP32, or ``_fp16`` for a float16 engine).
        output: the ``.engine`` to write (default: beside the ONNX file, same stem).
        workspace_mib: builder workspace limit in MiB.
        timing_cache: timing cache file, read if present and saved after the build (default: beside the ONNX).
        int8: refused: INT8 needs explicit quantization (Q/DQ nodes) in the ONNX.
    """

    onnx: Path
    output: Path | None = None
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Path | None = None
    int8: bool = False

    @property
    def engine_path(self) -> Path:
        return Path(self.output) if self.output else Path(self.onnx).with_suffix(".engine")

    @property
    def timing_cache_path(self) -> Path:
        return Path(self.timing_cache) if self.timing_cache else Path(self.onnx).parent / TIMING_CACHE_NAME


@dataclass
class BuildResult:
    engine: Path
    info_path: Path
    info: dict[str, Any]
    timing_cache: Path
    timing_cache_reused: bool


def gpu_info() -> tuple[list[int], str]:
    """Compute capability [major, minor] and name of the current CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "CUDA is not available (no NVIDIA GPU, driver or CUDA build of torch here): "
            "TensorRT engines are built on the GPU that will run them"
        )
    return list(torch.cuda.get_device_capability()), torch.cuda.get_device_name()


def build_engine(build: BuildConfig, trt: ModuleType | None = None) -> BuildResult:
    """Build and save a TensorRT engine for ``build.onnx``.

    Raises:
        ConfigError: INT8 was asked for, or the workspace is not positive.
        TensorRTUnavailable: TensorRT or CUDA is missing, or the TensorRT version is not 10.x/11.x.
        ModelError: the ONNX file is missing, not this library's, or TensorRT cannot parse or build it.
    """
    if build.int8:
        raise ConfigError(
            "--int8 is refused: TensorRT 10/11 take INT8 only through explicit quantization "
            "(Q/DQ nodes in the ONNX), and this graph has none; build FP32 or the _fp16 file"
        )
    if build.workspace_mib <= 0:
        raise ConfigError(f"workspace must be > 0 MiB, got {build.workspace_mib}")
    meta = read_model(build.onnx).metadata
    trt = trt or import_tensorrt()
    capability, gpu = gpu_info()
    major = tensorrt_major(trt)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 11.x types every network strongly (and has no weak-typing flags); 10.x needs the creation flag
    flags = 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(build.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT {trt.__version__} cannot parse {build.onnx}: {errors}")

    config = builder.create_builder_config()
    workspace = build.workspace_mib * (1 << 20)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    batch_max = int(meta["batch_max"])
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = [int(d) for d in tuple(tensor.shape)[1:]]
        shapes[tensor.name] = {"min": [1, *rest], "opt": [batch_max, *rest], "max": [batch_max, *rest]}
        profile.set_shape(
            tensor.name, shapes[tensor.name]["min"], shapes[tensor.name]["opt"], shapes[tensor.name]["max"]
        )
    config.add_optimization_profile(profile)

    cache_path = build.timing_cache_path
    reused = cache_path.is_file()
    cache = config.create_timing_cache(cache_path.read_bytes() if reused else b"")
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT {trt.__version__} failed to build an engine from {build.onnx} (see the log above)")
    engine = build.engine_path
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(bytes(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))

    info = {
        "model": meta,
        "tensorrt": {
            "version": trt.__version__,
            "compute_capability": capability,
            "gpu": gpu,
            "precision": meta.get("precision", "fp32"),
            "strongly_typed": True,
            "workspace_bytes": workspace,
            "profile": shapes,
            "onnx": Path(build.onnx).name,
            "onnx_sha256": hashlib.sha256(Path(build.onnx).read_bytes()).hexdigest(),
            "timing_cache": cache_path.name,
        },
    }
    info_path = engine_json_path(engine)
    info_path.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return BuildResult(engine, info_path, info, cache_path, reused)


def build_all(build: BuildConfig, trt: ModuleType | None = None) -> list[BuildResult]:
    """Build ``build.onnx`` and every companion graph its metadata names (``<stem>_<name>.onnx`` beside it, built
    to ``<engine stem>_<name>.engine``), with the same workspace and timing cache."""
    results = [build_engine(build, trt)]
    for name in results[0].info["model"].get("companions", []):
        results.append(
            build_engine(
                dataclasses.replace(
                    build, onnx=companion_path(build.onnx, name), output=companion_path(build.engine_path, name)
                ),
                trt,
            )
        )
    return results
