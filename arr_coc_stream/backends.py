"""Backends that run a graph: PyTorch, onnxruntime and TensorRT (DESIGN.md sections 2 and 8).

Every runner is a callable ``runner(inputs, timings) -> outputs`` over named tensors: ``inputs`` by the names of
its :class:`~arr_coc_stream.spec.GraphSpec` (states under their ``_in`` names), ``outputs`` a dict by output name,
whatever runs them, so :class:`~arr_coc_stream.engine.Engine` has one code path for the per-frame graph and for a
query head's companion graphs. The torch runner records per-stage timings; the others time the graph as one stage
(``"graph (onnxruntime)"``, ``"graph (tensorrt)"``).

A file-based runner reads the file's metadata (:mod:`arr_coc_stream.model_file`) and takes its spec from it; the
engine checks that metadata against its configuration and query head. onnxruntime and TensorRT are imported only
when their backend is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ArrCocError, ConfigError, ModelError
from .model_file import ModelFile, engine_info
from .spec import GraphSpec

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# onnxruntime execution providers in order of preference; the CPU provider is always the fallback
ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SUPPORTED_TENSORRT = (10, 11)  # major versions

log = logging.getLogger("arr_coc_stream")
Timings = dict[str, float] | None
Tensors = Mapping[str, torch.Tensor]


class TensorRTUnavailable(ArrCocError, RuntimeError):
    """TensorRT (or a CUDA GPU) is not available on this machine."""


class TorchRunner:
    """A graph module in PyTorch, eager or compiled.

    Args:
        module: called with the spec's inputs in order; returns its outputs in order (or the one output).
        spec: the module's inputs and outputs.
        device: where the module lives; inputs are moved there.
        timed: the module takes a ``timings`` dict and records per-stage milliseconds in it (eager only: a
            compiled graph is timed as one stage, ``"graph (compiled)"``).
        threads: torch intra-op threads for the call, set before it and restored after (the caller's thread
            count is left as it was); None: whatever the caller's is.
        compile: run the module through ``torch.compile`` (inductor, static shapes). The first call compiles
            (:attr:`compile_s` records how long, logged once); inductor's on-disk cache makes it quicker in the
            next process. Call it in one grad mode (the engine calls in ``inference_mode``): a tensor from
            another mode fails dynamo's guards and compiles again.
    """

    name = "torch"

    def __init__(
        self,
        module: nn.Module,
        spec: GraphSpec,
        device: torch.device,
        *,
        timed: bool = False,
        threads: int | None = None,
        compile: bool = False,
    ) -> None:
        self.module = module.to(device).eval()
        self.spec, self.device, self.threads = spec, device, threads
        self.timed = timed and not compile
        self.compile_s: float | None = None
        self._call: Any = torch.compile(self.module, dynamic=False) if compile else self.module
        mode = "compiled (inductor)" if compile else "eager"
        self.description = f"torch {torch.__version__} {mode} on {device}, intra-op threads: {threads or 'default'}"

    def __call__(self, inputs: Tensors, timings: Timings = None) -> dict[str, torch.Tensor]:
        args = [t.to(self.device) for t in self.spec.ordered(inputs)]
        if self._call is not self.module:
            args = [_standard_strides(t) for t in args]
        with intra_op_threads(self.threads):
            start = time.perf_counter()
            out = self._call(*args, timings=timings) if self.timed else self._call(*args)
            elapsed = time.perf_counter() - start
        if self._call is not self.module:
            if self.compile_s is None:
                self.compile_s = elapsed
                log.info("torch.compile: the graph compiled in %.1f s (first call)", elapsed)
            if timings is not None:
                timings["graph (compiled)"] = 1000.0 * elapsed
        return self.spec.named(out if isinstance(out, tuple) else (out,))


def _standard_strides(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied when its strides are not those of a fresh tensor of its shape.

    A compiled graph's guards check input strides exactly; a state that came out of the previous frame as a view
    (a channel of the texture: [1, 32, 32] with a batch stride of 36 x 32 x 32) would compile a second graph.
    """
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.append(step)
        step *= size
    if t.stride() == tuple(reversed(expected)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch intra-op threads and restore the caller's count after it.

    torch's count is per calling thread under OpenMP, so this touches only the thread that runs the engine.
    """
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class OnnxRuntimeRunner:
    """An exported ``.onnx`` file in onnxruntime, on the best execution provider it offers.

    Args:
        model: the ``.onnx`` file (a per-frame graph or a head's companion graph).
        providers: execution providers to try, in order (default: TensorRT, CUDA, then CPU, as available).
        threads: intra-op threads (None: onnxruntime's choice, one per physical core).

    Attributes:
        model: the file's metadata. spec: its inputs, states and outputs (from the metadata).
    """

    name = "onnxruntime"

    def __init__(
        self, model: str | os.PathLike[str], *, providers: tuple[str, ...] | None = None, threads: int | None = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError(
                "backend 'onnxruntime' needs the 'onnx' extra: pip install 'arr_coc_stream[onnx]' "
                "(or '[gpu]' for onnxruntime-gpu)"
            ) from exc
        path = _model_path(model, ".onnx")
        available = ort.get_available_providers()
        chosen = [p for p in providers or ORT_PROVIDERS if p in available]
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would otherwise spin between frames, taking the cores the decoder thread needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(os.fspath(path), options, providers=chosen)
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.model = ModelFile.from_props(self.session.get_modelmeta().custom_metadata_map, path)
        self.spec = self.model.spec
        have = ({i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()})
        if have != (set(self.spec.input_names), set(self.spec.output_names)):
            raise ModelError(
                f"{path}: its graph's inputs and outputs are not the ones its metadata names; "
                "re-export it with this version"
            )
        self.provider = self.session.get_providers()[0]
        self.description = (
            f"onnxruntime {ort.__version__} ({self.provider}), {path.name}, intra-op threads: {threads or 'default'}"
        )
        log.info("onnxruntime backend: %s (available providers: %s)", self.provider, ", ".join(available))

    def __call__(self, inputs: Tensors, timings: Timings = None) -> dict[str, torch.Tensor]:
        ordered = self.spec.ordered(inputs, str(self.model.path))
        _check_batch(ordered[0].shape[0], self.model)
        start = time.perf_counter()
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self.spec.input_names, ordered)}
        out = self.session.run(list(self.spec.output_names), feed)
        if timings is not None:
            timings["graph (onnxruntime)"] = 1000.0 * (time.perf_counter() - start)
        return self.spec.named([torch.from_numpy(np.ascontiguousarray(a)) for a in out])


class TensorRTRunner:
    """A TensorRT engine built by ``export/build_trt.py``, on the CUDA device it was built for.

    The engine's JSON (``<name>.engine.json``) must name this TensorRT version and this GPU's compute
    capability: an engine is tied to both, so any other is refused with :class:`ModelError`.
    """

    name = "tensorrt"

    def __init__(self, model: str | os.PathLike[str]) -> None:
        trt = import_tensorrt()
        path = _model_path(model, ".engine")
        info = engine_info(path)
        built = info.get("tensorrt", {})
        if built.get("version") != trt.__version__:
            raise ModelError(
                f"{path} was built with TensorRT {built.get('version')}, this is TensorRT "
                f"{trt.__version__}: rebuild it with export/build_trt.py"
            )
        capability = list(gpu_capability())
        if built.get("compute_capability") != capability:
            raise ModelError(
                f"{path} was built for a GPU of compute capability {built.get('compute_capability')} "
                f"({built.get('gpu')}), this GPU is {capability}: rebuild it on this machine"
            )
        self.model = ModelFile.from_metadata(info["model"], path)
        self.spec = self.model.spec
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelError(f"TensorRT could not deserialize {path}")
        self.context = self.engine.create_execution_context()
        self.description = f"TensorRT {trt.__version__} on {built.get('gpu')}, {path.name}"

    def __call__(self, inputs: Tensors, timings: Timings = None) -> dict[str, torch.Tensor]:
        trt = self._trt
        ordered = self.spec.ordered(inputs, str(self.model.path))
        _check_batch(ordered[0].shape[0], self.model)
        start = time.perf_counter()
        stream = torch.cuda.current_stream()
        keep = []
        for name, t in zip(self.spec.input_names, ordered):
            t = t.to("cuda").contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = []
        for name in self.spec.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError("TensorRT failed to run the engine")
        stream.synchronize()
        if timings is not None:
            timings["graph (tensorrt)"] = 1000.0 * (time.perf_counter() - start)
        return self.spec.named(outputs)


def open_model(
    backend: str, model: str | os.PathLike[str], threads: int | None = None
) -> OnnxRuntimeRunner | TensorRTRunner:
    """A runner for an exported file: ``.onnx`` with ``"onnxruntime"`` (on ``threads`` intra-op threads), a built
    ``.engine`` with ``"tensorrt"``."""
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(model, threads=threads)
    if backend == "tensorrt":
        return TensorRTRunner(model)
    raise ConfigError(f"backend {backend!r} runs no model file; file backends: onnxruntime, tensorrt")


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a clear :class:`TensorRTUnavailable`.

    The type stubs (``tensorrt-stubs``) install a ``tensorrt`` folder without the library, which imports as an
    empty namespace package: that counts as missing.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed. Install it on a machine with an NVIDIA GPU "
            "(pip install tensorrt, or NVIDIA's packages for your CUDA version), then run this again"
        ) from exc
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(
            "the 'tensorrt' module here has no Builder (only type stubs are installed); "
            "install TensorRT itself on a machine with an NVIDIA GPU"
        )
    if tensorrt_major(trt) not in SUPPORTED_TENSORRT:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is not supported; use 10.x or 11.x")
    return trt


def tensorrt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_capability() -> tuple[int, int]:
    """Compute capability (major, minor) of the current CUDA device."""
    if not torch.cuda.is_available():
        raise ModelError("backend 'tensorrt' needs a CUDA GPU and a CUDA build of torch; none is available here")
    return torch.cuda.get_device_capability()


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    return table[dtype]


def _model_path(model: str | os.PathLike[str], suffix: str) -> Path:
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    if path.suffix != suffix:
        raise ModelError(f"{path}: expected a {suffix} file for this backend")
    return path


def _check_batch(batch: int, model: ModelFile) -> None:
    if batch > model.batch_max:
        raise ModelError(
            f"batch of {batch} streams exceeds {model.path.name}'s batch_max {model.batch_max}; "
            "re-export it with --batch-max"
        )
