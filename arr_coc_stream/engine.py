"""The engine: the only place with state and I/O around the per-frame graph (DESIGN.md section 2).

It holds the temporal state between frames, turns timestamps into ``dt``, decides when the state starts over
(first frame, a time gap longer than ``gap_limit_s``, time going backwards, a change of resolution, a live
source's reconnect, an explicit :meth:`Engine.reset`), encodes the query, resizes frames to the work resolution
when the source did not, and turns the graph's tensors into :class:`FrameResult` objects. The graph runs in the
backend chosen at construction (``torch``, ``onnxruntime`` or ``tensorrt``, see :mod:`arr_coc_stream.backends`);
every backend returns the same tuple of tensors, so the rest is one code path.

With ``query_encoder="clip"`` the engine also runs the dense-CLIP keyframe graph (DESIGN.md section 6) on the
first frame and after every reset, every ``clip_interval_s``, and once the motion accumulated since the last
keyframe reaches ``clip_motion_threshold``; between keyframes the graph warps the cached features. When the
per-frame graph reports a cut, the engine runs the CLIP graph on that frame and runs the per-frame graph again
with the same ``*_in`` (the state is explicit, so the re-run has no side effects): the first frame of a shot is
scored with its own features. :attr:`FrameResult.keyframe` says why a frame was a keyframe.
"""

from __future__ import annotations

import os
import time as _time
from typing import Any

import cv2
import numpy as np
import torch

from .backends import create_clip_runner, create_runner
from .clip import ClipModel, load_clip
from .config import EngineConfig
from .errors import ConfigError, SourceError
from .graph import RESULT_NAMES, frame_shape, initial_state, output_names, state_names
from .query import EncodedQuery, get_encoder
from .result import FrameResult, cell_boxes, cells_to_pixels

DEFAULT_FPS = 30.0  # frame rate assumed for frames given without timestamps


class Engine:
    """Runs the per-frame graph on a stream of frames, carrying its temporal state.

    Args:
        config: the engine configuration (defaults when None).
        query: the text query, or None for query-free relevance.
        backend: ``"torch"`` (default, per-stage timings), ``"onnxruntime"`` or ``"tensorrt"``.
        model: the exported ``.onnx`` file (onnxruntime) or built ``.engine`` (tensorrt); its metadata must
            match ``config`` (:class:`ModelError` otherwise). With CLIP, the keyframe graph ``<name>_clip`` beside
            it runs on the same backend.
        clip: with ``query_encoder="clip"``, an already loaded :class:`~arr_coc_stream.clip.ClipModel` to share
            between engines (default: loaded from ``config.clip_model``).

    Example:
        >>> import numpy as np, arr_coc_stream
        >>> engine = arr_coc_stream.Engine(arr_coc_stream.EngineConfig(k=64), query="red")
        >>> frame = np.zeros((240, 320, 3), np.uint8); frame[100:140, 150:200] = (220, 20, 20)
        >>> result = engine.process(frame, time=0.0)
        >>> result.relevance.shape, int(result.valid.sum()) <= 64
        ((32, 32), True)
    """

    def __init__(self, config: EngineConfig | None = None, *, query: str | None = None, backend: str = "torch",
                 model: str | os.PathLike[str] | None = None, clip: ClipModel | None = None) -> None:
        self.config = config or EngineConfig()
        self.device = torch.device(self.config.device)
        self.clip: ClipModel | None = None
        if self.config.uses_clip:
            self.clip = clip if clip is not None else load_clip(str(self.config.clip_model))
        self.runner = create_runner(backend, self.config, model, self.device, self.clip)
        self.backend: str = self.runner.name
        self.graph = getattr(self.runner, "graph", None)  # the FrameGraph module for the torch backend
        self.clip_runner = (None if self.clip is None
                            else create_clip_runner(backend, self.config, model, self.device, self.clip))
        self._encoder = get_encoder(self.config.query_encoder, **({} if self.clip is None else {"model": self.clip}))
        self.query: EncodedQuery = self._encoder.encode(query)
        self._query_tensors = self._tensors_for(self.query)
        clip_dim = None if self.clip is None else self.clip.dim
        self._state_names = state_names(self.config)
        self._outputs = output_names(self.config)
        self._state: dict[str, torch.Tensor] = initial_state(self.config, 1, self.device, clip_dim)
        if self.clip is not None:
            self._no_features = torch.zeros((1, clip_dim, *self.config.grid), device=self.device)
            self._clip_size = self.clip.input_size(self.config.grid, self.config.clip_size)
        self._fresh = True
        self._last_time: float | None = None
        self._last_size: tuple[int, int] | None = None
        self._count = 0
        self.keyframes = 0

    @property
    def frames_processed(self) -> int:
        return self._count

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) frames are best given at: the graph's input size, or with CLIP the larger keyframe input size
        (the engine area-resizes to the work resolution itself)."""
        size = frame_shape(self.config)
        if self.clip is not None and self.config.input_mode == "work":
            size = self._clip_size
        return size

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
        head = (x, torch.tensor([max(dt, 0.0)], dtype=torch.float32, device=self.device),
                torch.tensor([reset], device=self.device), *self._query_tensors)
        states = tuple(self._state[name] for name in self._state_names)
        keyframe = None
        if self.clip is None:
            out = self.runner((*head, *states), timings)
        else:
            keyframe = self._keyframe_due(reset, max(dt, 0.0))
            out = self.runner((*head, *self._clip_inputs(frame, keyframe, timings), *states), timings)
            if bool(out[RESULT_NAMES.index("cut")][0]):
                if keyframe is None:  # score the shot's first frame with its own features: same *_in, again
                    out = self.runner((*head, *self._clip_inputs(frame, "cut", timings), *states), timings)
                keyframe = "cut"
        named = dict(zip(self._outputs, out))
        self._state = {name: named[f"{name}_out"] for name in self._state_names}
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
            keyframe=keyframe,
        )

    def header(self) -> dict[str, Any]:
        """Configuration and query, for JSONL headers and exported metadata."""
        header = {"config": self.config.to_dict(), "query": self.query.text, "query_terms": list(self.query.terms),
                  "query_ignored": list(self.query.ignored),
                  "backend": {"name": self.backend, "description": self.runner.description}}
        if self.clip is not None:
            header["clip"] = {"model": self.clip.name, "dim": self.clip.dim, "basis_digest": self.clip.text.digest(),
                              "input_size": list(self._clip_size)}
        return header

    def _keyframe_due(self, reset: bool, dt: float) -> str | None:
        """Why this frame needs dense CLIP features before the graph runs (a cut is known only after)."""
        if reset:
            return "first" if self._count == 0 else "reset"
        if float(self._state["clip_age"][0]) + dt >= self.config.clip_interval_s - 1e-6:
            return "interval"
        threshold = self.config.clip_motion_threshold
        if threshold is not None and float(self._state["clip_motion"][0]) >= threshold:
            return "motion"
        return None

    def _clip_inputs(self, frame: np.ndarray, keyframe: str | None,
                     timings: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip_feat, clip_key): the dense-CLIP graph's features on a keyframe, else unused zeros."""
        if keyframe is None:
            return self._no_features, torch.tensor([False], device=self.device)
        t0 = _time.perf_counter()
        h, w = self._clip_size
        image = frame if frame.shape[:2] == (h, w) else cv2.resize(
            frame, (w, h), interpolation=cv2.INTER_AREA if frame.shape[0] >= h else cv2.INTER_LINEAR)
        (feat,) = self.clip_runner((torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device),), None)
        self.keyframes += 1
        timings["clip"] = timings.get("clip", 0.0) + 1000.0 * (_time.perf_counter() - t0)
        return feat.to(self.device), torch.tensor([True], device=self.device)

    def _tensors_for(self, query: EncodedQuery) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in self._encoder.stack([query]))

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
