"""The engine: the only place with state and I/O around the per-frame graph (DESIGN.md section 2).

It holds the temporal state between frames, turns timestamps into ``dt``, decides when the state starts over
(first frame, a time gap longer than ``gap_limit_s``, time going backwards, a change of resolution, a live
source's reconnect, an explicit :meth:`Engine.reset`), encodes the query, resizes frames to the work resolution
when the source did not, and turns the graph's tensors into :class:`FrameResult` objects. The graph runs in the
backend chosen at construction (``torch``, ``onnxruntime`` or ``tensorrt``, see :mod:`arr_coc_stream.backends`);
every backend returns the same tuple of tensors, so the rest is one code path.
"""

from __future__ import annotations

import os
import time as _time
from typing import Any

import cv2
import numpy as np
import torch

from .backends import create_runner
from .config import EngineConfig
from .errors import ConfigError, SourceError
from .graph import OUTPUT_NAMES, RESULT_NAMES, STATE_NAMES, frame_shape, initial_state
from .query import EncodedQuery, get_encoder, stack_queries
from .result import FrameResult, cell_boxes, cells_to_pixels

DEFAULT_FPS = 30.0  # frame rate assumed for frames given without timestamps


class Engine:
    """Runs the per-frame graph on a stream of frames, carrying its temporal state.

    Args:
        config: the engine configuration (defaults when None).
        query: the text query, or None for query-free relevance.
        backend: ``"torch"`` (default, per-stage timings), ``"onnxruntime"`` or ``"tensorrt"``.
        model: the exported ``.onnx`` file (onnxruntime) or built ``.engine`` (tensorrt); its metadata must
            match ``config`` (:class:`ModelError` otherwise).

    Example:
        >>> import numpy as np, arr_coc_stream
        >>> engine = arr_coc_stream.Engine(arr_coc_stream.EngineConfig(k=64), query="red")
        >>> frame = np.zeros((240, 320, 3), np.uint8); frame[100:140, 150:200] = (220, 20, 20)
        >>> result = engine.process(frame, time=0.0)
        >>> result.relevance.shape, int(result.valid.sum()) <= 64
        ((32, 32), True)
    """

    def __init__(self, config: EngineConfig | None = None, *, query: str | None = None, backend: str = "torch",
                 model: str | os.PathLike[str] | None = None) -> None:
        self.config = config or EngineConfig()
        self.device = torch.device(self.config.device)
        self.runner = create_runner(backend, self.config, model, self.device)
        self.backend: str = self.runner.name
        self.graph = getattr(self.runner, "graph", None)  # the FrameGraph module for the torch backend
        self._encoder = get_encoder(self.config.query_encoder)
        self.query: EncodedQuery = self._encoder.encode(query)
        self._query_tensors = self._tensors_for(self.query)
        self._state: dict[str, torch.Tensor] = initial_state(self.config, 1, self.device)
        self._fresh = True
        self._last_time: float | None = None
        self._last_size: tuple[int, int] | None = None
        self._count = 0

    @property
    def frames_processed(self) -> int:
        return self._count

    def set_query(self, query: str | None) -> None:
        """Change the query; takes effect from the next frame, temporal state kept."""
        self.query = self._encoder.encode(query)
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
        out = self.runner((x, torch.tensor([max(dt, 0.0)], dtype=torch.float32, device=self.device),
                           torch.tensor([reset], device=self.device), *self._query_tensors,
                           *(self._state[name] for name in STATE_NAMES)), timings)
        named = dict(zip(OUTPUT_NAMES, out))
        self._state = {name: named[f"{name}_out"] for name in STATE_NAMES}
        self._fresh, self._last_time, self._last_size = False, time, size
        self._count += 1
        res = {name: named[name][0].cpu().numpy() for name in RESULT_NAMES}
        timings["total"] = 1000.0 * (_time.perf_counter() - start)
        return FrameResult(
            index=index, time=float(time), relevance=res["relevance"], indices=res["indices"],
            scores=res["scores"], valid=res["valid"], budgets=res["budgets"], lod=res["lod"],
            boxes=cell_boxes(res["indices"], self.config.grid, size),
            windows=cells_to_pixels(res["boxes"], self.config.grid, size),
            cut=bool(res["cut"]), scene_score=float(res["scene_score"]), motion=float(res["motion"]),
            query_terms=self.query.terms, timings=timings, reset=bool(reset or res["cut"]), source_size=size,
        )

    def header(self) -> dict[str, Any]:
        """Configuration and query, for JSONL headers and exported metadata."""
        return {"config": self.config.to_dict(), "query": self.query.text, "query_terms": list(self.query.terms),
                "query_ignored": list(self.query.ignored),
                "backend": {"name": self.backend, "description": self.runner.description}}

    def _tensors_for(self, query: EncodedQuery) -> tuple[torch.Tensor, torch.Tensor]:
        weights, targets = stack_queries([query])
        return weights.to(self.device), targets.to(self.device)

    def _to_input(self, frame: np.ndarray) -> torch.Tensor:
        """[H, W, 3] uint8 -> [1, h, w, 3] uint8 at the graph's input size (area resize when needed)."""
        h, w = frame_shape(self.config)
        if self.config.input_mode == "full" and frame.shape[:2] != (h, w):
            raise ConfigError(f"input_mode='full' was configured for frames of {(h, w)}, got {frame.shape[:2]}")
        if frame.shape[:2] != (h, w):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(np.ascontiguousarray(frame))[None].to(self.device)


def _check_frame(frame: Any, index: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{type(frame).__name__} {getattr(frame, 'shape', '')} {getattr(frame, 'dtype', '')}".strip()
        raise SourceError(f"frame {index}: expected an HxWx3 uint8 RGB array, got {desc}")
    return frame
