"""The engine: the only place with state and I/O around the per-frame graph (DESIGN.md section 2).

It holds the temporal state between frames, turns timestamps into ``dt``, decides when the state starts over
(first frame, a time gap longer than ``gap_limit_s``, time going backwards, a change of resolution, a live
source's reconnect, an explicit :meth:`Engine.reset`), encodes the query through the query head, resizes frames to
the graph's input size when the source did not, and turns the graph's named outputs into :class:`FrameResult`
objects. The graph runs in the backend chosen at construction (``torch``, ``onnxruntime`` or ``tensorrt``, see
:mod:`arr_coc_stream.backends`); every backend returns the same named tensors, so the rest is one code path.

The query head (:mod:`arr_coc_stream.query`) supplies the graph's query inputs and its keyframe policy: before
each frame the engine asks it for that frame's inputs (the clip head runs its dense keyframe graph there), and
when the graph reports a cut the head may ask for the frame to run again with new inputs and the same ``*_in``
(the state is explicit, so the re-run has no side effects). :attr:`FrameResult.keyframe` says why a frame was a
keyframe.
"""

from __future__ import annotations

import os
import time as _time
from typing import Any

import cv2
import numpy as np
import torch

from .backends import BACKENDS, TorchRunner, open_model
from .config import EngineConfig
from .errors import ConfigError, ModelError, SourceError
from .graph import FrameGraph, graph_spec
from .model_file import companion_path
from .query import EncodedQuery, QueryHead, build_head
from .result import FrameResult, cell_boxes, cells_to_pixels
from .sources.base import DEFAULT_FPS


class Engine:
    """Runs the per-frame graph on a stream of frames, carrying its temporal state.

    Args:
        config: the engine configuration; or give ``options`` (:class:`EngineConfig` fields). With neither:
            the defaults, or a model file's own configuration.
        query: the text query, or None for query-free relevance.
        backend: ``"torch"`` (default, per-stage timings), ``"onnxruntime"`` or ``"tensorrt"``.
        model: the exported ``.onnx`` file (onnxruntime) or built ``.engine`` (tensorrt). It defines the
            configuration: ``options`` that shape the graph must agree with it (:class:`ConfigError` naming both
            values otherwise), the others (``device``, ``gap_limit_s``...) apply. A query head's companion graphs
            (``<name>_clip`` for the clip head) run from the files beside it.
        head: an already built query head, to share its loaded model between engines (default: built from the
            configuration, see :func:`arr_coc_stream.query.build_head`).
        **options: :class:`EngineConfig` fields, instead of ``config``.

    Example:
        >>> import numpy as np, arr_coc_stream
        >>> engine = arr_coc_stream.Engine(arr_coc_stream.EngineConfig(k=64), query="red")
        >>> frame = np.zeros((240, 320, 3), np.uint8); frame[100:140, 150:200] = (220, 20, 20)
        >>> result = engine.process(frame, time=0.0)
        >>> result.relevance.shape, int(result.valid.sum()) <= 64
        ((32, 32), True)
    """

    def __init__(self, config: EngineConfig | None = None, *, query: str | None = None, backend: str = "torch",
                 model: str | os.PathLike[str] | None = None, head: QueryHead | None = None,
                 **options: Any) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        if backend == "torch":
            if model is not None:
                raise ConfigError("backend 'torch' takes no model file; use backend='onnxruntime' or 'tensorrt'")
            if config is not None and options:
                raise ConfigError(f"give a config or options, not both (got options {sorted(options)})")
            self.config = config or EngineConfig.from_options(**options)
            self.device = torch.device(self.config.device)
            self.head = head or build_head(self.config)
            graph = FrameGraph(self.config, self.head)
            self.runner: Any = TorchRunner(graph, graph.spec, self.device, timed=True)
            self.companions: dict[str, Any] = {name: TorchRunner(c.module, c.spec, self.device)
                                               for name, c in self.head.companions().items()}
        else:
            if model is None:
                raise ConfigError(f"backend {backend!r} needs a model file (model='models/<name>.onnx' or "
                                  "'.engine'); make one with arr-coc-stream export")
            self.runner = open_model(backend, model)
            self.config = self.runner.model.resolve(config, options)
            self.device = torch.device(self.config.device)
            self.head = head or build_head(self.config)
            self.runner.model.check(graph_spec(self.config, self.head), self.head)
            self.companions = {}
            for name, c in self.head.companions().items():
                runner = open_model(backend, _companion_file(model, name))
                runner.model.check(c.spec, self.head, companion=name)
                self.companions[name] = runner
        self.spec = self.runner.spec
        self.backend: str = self.runner.name
        self.query: EncodedQuery = self.head.encode(query)
        self._query_tensors = self._tensors_for(self.query)
        self._state = self.spec.initial_state(1, self.device)
        self._fresh = True
        self._last_time: float | None = None
        self._last_size: tuple[int, int] | None = None
        self._count = 0

    @property
    def frames_processed(self) -> int:
        return self._count

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The state the next frame starts from, by state name (batch 1; the engine's own tensors: read, do not
        modify)."""
        return dict(self._state)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) frames are best given at: the graph's input size, or the query head's larger wish in ``work``
        input mode (the engine area-resizes to the work resolution itself)."""
        wish = self.head.input_size()
        return wish if wish is not None and self.config.input_mode == "work" else self.config.frame_shape

    def set_query(self, query: str | None) -> None:
        """Change the query; takes effect from the next frame, temporal state kept."""
        self.query = self.head.encode(query)
        self._query_tensors = self._tensors_for(self.query)

    def reset(self) -> None:
        """Start the temporal state over at the next frame (e.g. after seeking)."""
        self._fresh = True

    @torch.inference_mode()
    def process(self, frame: np.ndarray, time: float | None = None, *, index: int | None = None,
                source_size: tuple[int, int] | None = None, reset: bool = False) -> FrameResult:
        """Process one frame.

        Args:
            frame: [H, W, 3] uint8 RGB, at any resolution (resized here when it is not the graph's input size).
            time: seconds (from the source's timestamps); None assumes 30 fps after the previous frame.
            index: source frame index; None counts processed frames.
            source_size: (H, W) of the original frame when ``frame`` was already resized by the decoder.
            reset: start the temporal state over at this frame (a live source reconnected: ``Frame.reset``).

        Returns:
            The frame's :class:`FrameResult`.
        """
        start = _time.perf_counter()
        frame = _check_frame(frame, self._count if index is None else index)
        size = source_size or (frame.shape[0], frame.shape[1])
        index = self._count if index is None else index
        if time is None:
            time = (self._last_time + 1.0 / DEFAULT_FPS) if self._last_time is not None else 0.0
        dt = 0.0 if self._last_time is None else time - self._last_time
        reset = (reset or self._fresh or size != self._last_size or dt < 0 or dt > self.config.gap_limit_s)
        timings: dict[str, float] = {}
        t0 = _time.perf_counter()
        x = self._to_input(frame)
        timings["resize"] = 1000.0 * (_time.perf_counter() - t0)
        inputs = {"frame": x, "dt": torch.tensor([max(dt, 0.0)], dtype=torch.float32, device=self.device),
                  "reset": torch.tensor([reset], device=self.device), **self._query_tensors,
                  **{s.in_name: self._state[s.name] for s in self.spec.states}}
        extra, keyframe = self.head.before_frame(frame, self._state, reset=reset, first=self._count == 0,
                                                 dt=max(dt, 0.0), companions=self.companions, timings=timings)
        out = self.runner({**inputs, **self._on_device(extra)}, timings)
        if bool(out["cut"][0]):
            again, keyframe = self.head.after_cut(frame, keyframe, self.companions, timings)
            if again is not None:  # same *_in: the re-run has no side effects
                out = self.runner({**inputs, **self._on_device(again)}, timings)
        self._state = {s.name: out[s.out_name] for s in self.spec.states}
        self._fresh, self._last_time, self._last_size = False, time, size
        self._count += 1
        res = {t.name: out[t.name][0].cpu().numpy() for t in self.spec.outputs}
        timings["total"] = 1000.0 * (_time.perf_counter() - start)
        return FrameResult(
            index=index, time=float(time), relevance=res["relevance"], indices=res["indices"],
            scores=res["scores"], valid=res["valid"], budgets=res["budgets"], lod=res["lod"],
            boxes=cell_boxes(res["indices"], self.config.grid, size),
            windows=cells_to_pixels(res["boxes"], self.config.grid, size),
            cut=bool(res["cut"]), scene_score=float(res["scene_score"]), motion=float(res["motion"]),
            query_terms=self.query.terms, query_ignored=self.query.ignored, timings=timings, reset=bool(reset or res["cut"]), source_size=size,
            keyframe=keyframe,
        )

    def header(self) -> dict[str, Any]:
        """Configuration and query, for JSONL headers."""
        return {"config": self.config.to_dict(), "query": self.query.text, "query_terms": list(self.query.terms),
                "query_ignored": list(self.query.ignored),
                "backend": {"name": self.backend, "description": self.runner.description}, **self.head.header()}

    def _tensors_for(self, query: EncodedQuery) -> dict[str, torch.Tensor]:
        return self._on_device(self.head.stack([query]))

    def _on_device(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: t.to(self.device) for name, t in tensors.items()}

    def _to_input(self, frame: np.ndarray) -> torch.Tensor:
        """[H, W, 3] uint8 -> [1, h, w, 3] uint8 at the graph's input size (area resize when needed)."""
        h, w = self.config.frame_shape
        if self.config.input_mode == "full" and frame.shape[:2] != (h, w):
            raise ConfigError(f"input_mode='full' was configured for frames of {(h, w)}, got {frame.shape[:2]}")
        if frame.shape[:2] != (h, w):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(np.ascontiguousarray(frame))[None].to(self.device)


def _companion_file(model: str | os.PathLike[str], name: str) -> str:
    path = companion_path(model, name)
    if not path.is_file():
        raise ModelError(f"the {name!r} companion graph {path} does not exist beside {model}; export both with "
                         "arr-coc-stream export" + (" and build both with export/build_trt.py"
                                                    if path.suffix == ".engine" else ""))
    return str(path)


def _check_frame(frame: Any, index: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{type(frame).__name__} {getattr(frame, 'shape', '')} {getattr(frame, 'dtype', '')}".strip()
        raise SourceError(f"frame {index}: expected an HxWx3 uint8 RGB array, got {desc}")
    return frame
