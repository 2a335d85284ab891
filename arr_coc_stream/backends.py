"""Backends that run the per-frame graph: PyTorch, onnxruntime and TensorRT (DESIGN.md sections 2 and 8).

Every backend is a callable ``runner(inputs, timings) -> outputs``: ``inputs`` are the graph's tensors in
:func:`~arr_coc_stream.graph.input_names` order, ``outputs`` the tensors in
:func:`~arr_coc_stream.graph.output_names` order, whatever runs them, so :class:`~arr_coc_stream.engine.Engine`
has one code path. The torch runner records per-stage timings; the others run the graph as one stage
(``"graph (onnxruntime)"``, ``"graph (tensorrt)"``).

With the CLIP query encoder a second runner of the same backend runs the dense-CLIP keyframe graph
(``image [B, H, W, 3] uint8 -> clip_feat [B, D, gh, gw]``): :class:`~arr_coc_stream.clip.DenseClip` in torch, or
the ``<name>_clip.onnx`` / ``<name>_clip.engine`` file beside the per-frame model (:func:`clip_model_path`).

A model file must match the engine's configuration: its metadata (ONNX ``metadata_props``, or the JSON beside a
TensorRT engine) is compared field by field, and a CLIP graph's basis against the loaded CLIP model's; a mismatch
is refused with :class:`ModelError`. onnxruntime and TensorRT are imported only when their backend is asked for.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from .config import EngineConfig
from .errors import ConfigError, ModelError
from .export import check_model, clip_model_path, parse_metadata
from .graph import build_graph

if TYPE_CHECKING:
    from .clip import ClipModel

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# onnxruntime execution providers in order of preference; the CPU provider is always the fallback
ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

log = logging.getLogger("arr_coc_stream")
Timings = dict[str, float] | None


class TorchRunner:
    """The per-frame graph in eager PyTorch, with per-stage timings."""

    name = "torch"

    def __init__(self, config: EngineConfig, device: torch.device, clip: ClipModel | None = None) -> None:
        self.graph = build_graph(config, None if clip is None else clip.text).to(device).eval()
        self.device = device
        self.description = f"torch {torch.__version__} on {device}"

    def __call__(self, inputs: tuple[torch.Tensor, ...], timings: Timings = None) -> tuple[torch.Tensor, ...]:
        return self.graph(*inputs, timings=timings)


class TorchClipRunner:
    """The dense-CLIP keyframe graph in eager PyTorch."""

    name = "torch"

    def __init__(self, config: EngineConfig, device: torch.device, clip: ClipModel) -> None:
        self.graph = clip.dense(config.grid, config.clip_size).to(device).eval()
        self.description = f"torch {torch.__version__} on {device}, {clip.name}"

    def __call__(self, inputs: tuple[torch.Tensor, ...], timings: Timings = None) -> tuple[torch.Tensor, ...]:
        return (self.graph(*inputs),)


class OnnxRuntimeRunner:
    """An exported ``.onnx`` file in onnxruntime, on the best execution provider it offers.

    Args:
        config: the engine configuration the model must have been exported for.
        model: path of the ``.onnx`` file: a per-frame graph, or a dense-CLIP graph (``<name>_clip.onnx``).
        clip: the CLIP model of a CLIP configuration; the file's basis must be this model's.
        dense: the file is the dense-CLIP keyframe graph.
        providers: execution providers to try, in order (default: TensorRT, CUDA, then CPU, as available).
        threads: intra-op threads (default: onnxruntime's choice, one per physical core).
    """

    name = "onnxruntime"

    def __init__(self, config: EngineConfig, model: str | os.PathLike[str], *, clip: ClipModel | None = None,
                 dense: bool = False, providers: tuple[str, ...] | None = None, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime "
                              "(or onnxruntime-gpu)") from exc
        path = _model_path(model, ".onnx")
        available = ort.get_available_providers()
        wanted = providers or ORT_PROVIDERS
        chosen = [p for p in wanted if p in available]
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
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.metadata = parse_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        check_model(self.metadata, config, path, clip, dense)
        self.batch_max = int(self.metadata["batch_max"])
        self.provider = self.session.get_providers()[0]
        self._inputs, self._outputs = _io_names(self.metadata)
        missing = sorted(set(self._inputs) - {i.name for i in self.session.get_inputs()})
        if missing:
            raise ModelError(f"{path} lacks the graph inputs {missing}; re-export it with this version")
        self.description = f"onnxruntime {ort.__version__} ({self.provider}), {path.name}"
        log.info("onnxruntime backend: %s (available providers: %s)", self.provider, ", ".join(available))

    def __call__(self, inputs: tuple[torch.Tensor, ...], timings: Timings = None) -> tuple[torch.Tensor, ...]:
        _check_batch(inputs[0].shape[0], self.batch_max)
        start = time.perf_counter()
        feed = {name: t.detach().cpu().numpy() for name, t in zip(self._inputs, inputs)}
        out = self.session.run(self._outputs, feed)
        if timings is not None:
            timings["graph (onnxruntime)"] = 1000.0 * (time.perf_counter() - start)
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in out)


class TensorRTRunner:
    """A TensorRT engine built by ``export/build_trt.py``, on the CUDA device it was built for.

    The engine's JSON (``<name>.engine.json``) must name this TensorRT version and this GPU's compute
    capability: an engine is tied to both, so any other is refused with :class:`ModelError`.
    """

    name = "tensorrt"

    def __init__(self, config: EngineConfig, model: str | os.PathLike[str], *, clip: ClipModel | None = None,
                 dense: bool = False) -> None:
        from .trt_build import engine_json_path, import_tensorrt

        trt = import_tensorrt()
        path = _model_path(model, ".engine")
        info_path = engine_json_path(path)
        if not info_path.is_file():
            raise ModelError(f"{path} has no {info_path.name} beside it; rebuild it with export/build_trt.py")
        info = json.loads(info_path.read_text())
        built = info.get("tensorrt", {})
        if built.get("version") != trt.__version__:
            raise ModelError(f"{path} was built with TensorRT {built.get('version')}, this is TensorRT "
                             f"{trt.__version__}: rebuild it with export/build_trt.py")
        capability = list(gpu_capability())
        if built.get("compute_capability") != capability:
            raise ModelError(f"{path} was built for a GPU of compute capability {built.get('compute_capability')} "
                             f"({built.get('gpu')}), this GPU is {capability}: rebuild it on this machine")
        self.metadata = info["model"]
        check_model(self.metadata, config, path, clip, dense)
        self.batch_max = int(self.metadata["batch_max"])
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelError(f"TensorRT could not deserialize {path}")
        self.context = self.engine.create_execution_context()
        self._inputs, self._outputs = _io_names(self.metadata)
        self.description = f"TensorRT {trt.__version__} on {built.get('gpu')}, {path.name}"

    def __call__(self, inputs: tuple[torch.Tensor, ...], timings: Timings = None) -> tuple[torch.Tensor, ...]:
        trt = self._trt
        _check_batch(inputs[0].shape[0], self.batch_max)
        start = time.perf_counter()
        stream = torch.cuda.current_stream()
        keep = []
        for name, t in zip(self._inputs, inputs):
            t = t.to("cuda").contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = []
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)), device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError("TensorRT failed to run the engine")
        stream.synchronize()
        if timings is not None:
            timings["graph (tensorrt)"] = 1000.0 * (time.perf_counter() - start)
        return tuple(outputs)


def create_runner(backend: str, config: EngineConfig, model: str | os.PathLike[str] | None,
                  device: torch.device, clip: ClipModel | None = None) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The per-frame graph's runner for ``backend`` (one of :data:`BACKENDS`); ``model`` is required except for
    torch; ``clip`` is the loaded CLIP model of a CLIP configuration."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if backend == "torch":
        if model is not None:
            raise ConfigError("backend 'torch' takes no model file; use backend='onnxruntime' or 'tensorrt'")
        return TorchRunner(config, device, clip)
    if model is None:
        raise ConfigError(f"backend {backend!r} needs a model file (model='models/<name>.onnx' or '.engine'); "
                          "make one with export/export_onnx.py")
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(config, model, clip=clip)
    return TensorRTRunner(config, model, clip=clip)


def create_clip_runner(backend: str, config: EngineConfig, model: str | os.PathLike[str] | None,
                       device: torch.device, clip: ClipModel) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The dense-CLIP keyframe graph's runner, same backend as the per-frame graph: for onnxruntime and tensorrt
    the ``<name>_clip`` file beside the per-frame ``model`` (:func:`clip_model_path`)."""
    if backend == "torch":
        return TorchClipRunner(config, device, clip)
    path = clip_model_path(model)  # type: ignore[arg-type]
    if not path.is_file():
        raise ModelError(f"the dense-CLIP graph {path} does not exist beside {model}; export both with "
                         f"export/export_onnx.py --clip-model {clip.name}"
                         + (" and build both with export/build_trt.py" if backend == "tensorrt" else ""))
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(config, path, clip=clip, dense=True)
    return TensorRTRunner(config, path, clip=clip, dense=True)


def _io_names(meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    return [i["name"] for i in meta["inputs"]], [o["name"] for o in meta["outputs"]]


def gpu_capability() -> tuple[int, int]:
    """Compute capability (major, minor) of the current CUDA device."""
    if not torch.cuda.is_available():
        raise ModelError("backend 'tensorrt' needs a CUDA GPU and a CUDA build of torch; none is available here")
    return torch.cuda.get_device_capability()


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool, trt.DataType.UINT8: torch.uint8}
    return table[dtype]


def _model_path(model: str | os.PathLike[str], suffix: str) -> Path:
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    if path.suffix != suffix:
        raise ModelError(f"{path}: expected a {suffix} file for this backend")
    return path


def _check_batch(batch: int, batch_max: int) -> None:
    if batch > batch_max:
        raise ModelError(f"batch of {batch} streams exceeds the model's batch_max {batch_max}; "
                         "re-export it with --batch-max")
