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

A frame goes through three steps: :meth:`Engine.begin` checks it against one stream's :class:`Slot` (state, clock,
query) and makes its inputs, :meth:`Engine.run_steps` runs the graph once for the steps of any number of streams,
and :meth:`Engine.finish` commits one row of the outputs to its slot. :meth:`Engine.process` is the three for its
own slot; :class:`~arr_coc_stream.multi.MultiEngine` batches many slots through the same graph.
"""

from __future__ import annotations

import functools
import math
import os
import time as _time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import numpy as np
import torch

from .backends import BACKENDS, TorchRunner, intra_op_threads, open_model
from .config import EngineConfig
from .errors import ConfigError, InputError, InputTypeError, ModelError
from .graph import FrameGraph, graph_spec
from .model_file import companion_path
from .query import EncodedQuery, QueryHead, build_head
from .result import FrameResult, cell_boxes, cells_to_pixels
from .sources.base import DEFAULT_FPS

T = TypeVar("T")


@dataclass
class Slot:
    """One stream's bookkeeping between frames: its state tensors (batch 1), clock, frame size, count and query."""

    state: dict[str, torch.Tensor]
    query: EncodedQuery
    query_tensors: dict[str, torch.Tensor]
    fresh: bool = True
    last_time: float | None = None
    last_size: tuple[int, int] | None = None
    count: int = 0


@dataclass
class Step:
    """One stream's frame between :meth:`Engine.begin` and :meth:`Engine.finish`: checked values, graph inputs."""

    slot: Slot
    frame: np.ndarray
    index: int
    time: float
    size: tuple[int, int]
    reset: bool
    inputs: dict[str, torch.Tensor]
    keyframe: str | None
    timings: dict[str, float]
    start: float


def _engine_threads(method: Callable[..., T]) -> Callable[..., T]:
    """Run an engine method with the configuration's torch intra-op threads, the caller's restored after.

    The whole frame, not only the graph call: an operator outside it (a state check, a copy of the outputs) on
    two threads waits for a second core, which a busy machine gives late (measured: 73-78 ms a frame against
    26-29 ms with one process busy beside it).
    """

    @functools.wraps(method)
    def wrapper(self: Engine, *args: Any, **kwargs: Any) -> T:
        with intra_op_threads(self.config.threads):
            return method(self, *args, **kwargs)

    return wrapper


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

    Examples:
        >>> import numpy as np, arr_coc_stream
        >>> engine = arr_coc_stream.Engine(arr_coc_stream.EngineConfig(k=64), query="red")
        >>> frame = np.zeros((240, 320, 3), np.uint8); frame[100:140, 150:200] = (220, 20, 20)
        >>> result = engine.process(frame, time=0.0)
        >>> result.relevance.shape, int(result.valid.sum()) <= 64
        ((32, 32), True)
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        query: str | None = None,
        backend: str = "torch",
        model: str | os.PathLike[str] | None = None,
        head: QueryHead | None = None,
        **options: Any,
    ) -> None:
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
            self.runner: Any = TorchRunner(
                graph, graph.spec, self.device, timed=True, threads=self.config.threads, compile=self.config.compile
            )
            self.companions: dict[str, Any] = {
                name: TorchRunner(c.module, c.spec, self.device, threads=self.config.threads)
                for name, c in self.head.companions().items()
            }
        else:
            if model is None:
                raise ConfigError(
                    f"backend {backend!r} needs a model file (model='models/<name>.onnx' or "
                    "'.engine'); make one with arr-coc-stream export"
                )
            self.runner = open_model(backend, model, _threads(config, options))
            self.config = self.runner.model.resolve(config, options)
            if self.config.compile:
                raise ConfigError(
                    f"compile=True compiles the torch backend's graph; backend {backend!r} runs an exported file"
                )
            self.device = torch.device(self.config.device)
            self.head = head or build_head(self.config)
            self.runner.model.check(graph_spec(self.config, self.head), self.head)
            self.companions = {}
            for name, c in self.head.companions().items():
                runner = open_model(backend, _companion_file(model, name), self.config.threads)
                runner.model.check(c.spec, self.head, companion=name)
                self.companions[name] = runner
        self.spec = self.runner.spec
        self.backend: str = self.runner.name
        self._slot = self.new_slot(query)

    @property
    def query(self) -> EncodedQuery:
        return self._slot.query

    @property
    def frames_processed(self) -> int:
        return self._slot.count

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The state the next frame starts from, by state name (batch 1; the engine's own tensors: read, do not
        modify)."""
        return dict(self._slot.state)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) frames are best given at: the graph's input size, or the query head's larger wish in ``work``
        input mode (the engine area-resizes to the work resolution itself)."""
        wish = self.head.input_size()
        return wish if wish is not None and self.config.input_mode == "work" else self.config.frame_shape

    def set_query(self, query: str | None) -> None:
        """Change the query; takes effect from the next frame, temporal state kept."""
        self.set_slot_query(self._slot, query)

    def reset(self) -> None:
        """Start the temporal state over at the next frame (e.g. after seeking): fresh state tensors, no previous
        time or size; the query and the count of processed frames are kept."""
        self.reset_slot(self._slot)

    @_engine_threads
    @torch.inference_mode()
    def process(
        self,
        frame: np.ndarray,
        time: float | None = None,
        *,
        index: int | None = None,
        source_size: tuple[int, int] | None = None,
        reset: bool = False,
    ) -> FrameResult:
        """Process one frame.

        Args:
            frame: [H, W, 3] uint8 RGB, at any resolution (resized here when it is not the graph's input size).
            time: seconds (from the source's timestamps); None assumes 30 fps after the previous frame.
            index: source frame index; None counts processed frames.
            source_size: (H, W) of the original frame when ``frame`` was already resized by the decoder.
            reset: start the temporal state over at this frame (a live source reconnected: ``Frame.reset``).

        Returns:
            The frame's :class:`FrameResult`.

        Raises:
            InputError: a frame of the wrong shape or an empty one, a non-finite time, an index or source size out
                of range; :class:`InputTypeError` (also a ``TypeError``) for a value of the wrong type. A rejected
                frame leaves the engine as it was.
            ModelError: the graph produced a non-finite state (the state is kept as before the frame).
        """
        step = self.begin(self._slot, frame, time, index=index, source_size=source_size, reset=reset)
        return self.finish(step, self.run_steps([step]), 0)

    def new_slot(self, query: str | None) -> Slot:
        """A stream's fresh bookkeeping: state tensors, clock and the encoded query."""
        encoded = self.head.encode(query)
        return Slot(state=self._initial_state(), query=encoded, query_tensors=self._tensors_for(encoded))

    def set_slot_query(self, slot: Slot, query: str | None) -> None:
        """Give one stream a new query from its next frame, its state kept."""
        slot.query = self.head.encode(query)
        slot.query_tensors = self._tensors_for(slot.query)

    def reset_slot(self, slot: Slot) -> None:
        """Start one stream over at its next frame: fresh state tensors, no previous time or size."""
        slot.state, slot.fresh, slot.last_time, slot.last_size = self._initial_state(), True, None, None

    def begin(
        self,
        slot: Slot,
        frame: np.ndarray,
        time: float | None = None,
        *,
        index: int | None = None,
        source_size: tuple[int, int] | None = None,
        reset: bool = False,
    ) -> Step:
        """Check one stream's frame and make its graph inputs (batch 1); nothing of ``slot`` changes yet."""
        start = _time.perf_counter()
        index = slot.count if index is None else _check_int("index", index, 0)
        frame = _check_frame(frame, index)
        size = (frame.shape[0], frame.shape[1]) if source_size is None else _check_size(source_size, index)
        if time is None:
            time = (slot.last_time + 1.0 / DEFAULT_FPS) if slot.last_time is not None else 0.0
        time = _check_time(time, index)
        dt = 0.0 if slot.last_time is None else time - slot.last_time
        reset = reset or slot.fresh or size != slot.last_size or dt < 0 or dt > self.config.gap_limit_s
        timings: dict[str, float] = {}
        t0 = _time.perf_counter()
        x = self._to_input(frame)
        timings["resize"] = 1000.0 * (_time.perf_counter() - t0)
        inputs = {
            "frame": x,
            "dt": torch.tensor([[max(dt, 0.0)]], dtype=torch.float32, device=self.device),
            "reset": torch.tensor([[reset]], device=self.device),
            **slot.query_tensors,
            **{s.in_name: slot.state[s.name] for s in self.spec.states},
        }
        extra, keyframe = self.head.before_frame(
            frame,
            slot.state,
            reset=reset,
            first=slot.count == 0,
            dt=max(dt, 0.0),
            companions=self.companions,
            timings=timings,
        )
        return Step(
            slot, frame, index, time, size, reset, {**inputs, **self._on_device(extra)}, keyframe, timings, start
        )

    def run_steps(self, steps: list[Step]) -> dict[str, torch.Tensor]:
        """One graph call for the steps of several streams, batched in order; a stream whose frame is a cut and
        whose query head asks for it runs again alone with its new inputs (same ``*_in``: no side effects).

        Returns:
            every output by name, [len(steps), ...].
        """
        timings: dict[str, float] = {}
        batch = (
            steps[0].inputs
            if len(steps) == 1
            else {name: torch.cat([s.inputs[name] for s in steps]) for name in steps[0].inputs}
        )
        out = self.runner(batch, timings)
        for i, step in enumerate(steps):
            step.timings.update(timings)
            if bool(out["cut"][i].item()):
                again, step.keyframe = self.head.after_cut(step.frame, step.keyframe, self.companions, step.timings)
                if again is not None:
                    step.inputs.update(self._on_device(again))
                    row = self.runner(step.inputs, step.timings)
                    out = {
                        name: torch.cat([t[:i], row[name], t[i + 1 :]]) if len(steps) > 1 else row[name]
                        for name, t in out.items()
                    }
        return out

    def finish(self, step: Step, out: dict[str, torch.Tensor], i: int) -> FrameResult:
        """Commit row ``i`` of a graph call's outputs to the step's stream and make its :class:`FrameResult`."""
        slot = step.slot
        state = {s.name: out[s.out_name][i : i + 1] for s in self.spec.states}
        _check_state(state, step.index, self.backend)  # a non-finite value would stay in the state for good
        slot.state = state
        slot.fresh, slot.last_time, slot.last_size = False, step.time, step.size
        slot.count += 1
        res = {t.name: out[t.name][i].cpu().numpy() for t in self.spec.outputs}
        step.timings["total"] = 1000.0 * (_time.perf_counter() - step.start)
        return FrameResult(
            index=step.index,
            time=float(step.time),
            relevance=res["relevance"],
            indices=res["indices"],
            scores=res["scores"],
            valid=res["valid"],
            budgets=res["budgets"],
            lod=res["lod"],
            boxes=cell_boxes(res["indices"], self.config.grid, step.size),
            windows=cells_to_pixels(res["boxes"], self.config.grid, step.size),
            cut=bool(res["cut"].item()),
            scene_score=float(res["scene_score"].item()),
            motion=float(res["motion"].item()),
            query_terms=slot.query.terms,
            query_ignored=slot.query.ignored,
            timings=step.timings,
            reset=bool(step.reset or res["cut"].item()),
            source_size=step.size,
            keyframe=step.keyframe,
        )

    def header(self) -> dict[str, Any]:
        """Configuration and query, for JSONL headers."""
        return {
            "config": self.config.to_dict(),
            "query": self.query.text,
            "query_terms": list(self.query.terms),
            "query_ignored": list(self.query.ignored),
            "backend": {"name": self.backend, "description": self.runner.description},
            **self.head.header(),
        }

    @torch.inference_mode()
    def _initial_state(self) -> dict[str, torch.Tensor]:
        """Fresh state tensors, made in the mode :meth:`process` runs in (a compiled graph's guards check it)."""
        return self.spec.initial_state(1, self.device)

    @torch.inference_mode()
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


def _threads(config: EngineConfig | None, options: dict[str, Any]) -> int | None:
    """The intra-op threads asked for, before the model file's configuration is resolved."""
    return config.threads if config is not None else options.get("threads", EngineConfig.threads)


def _companion_file(model: str | os.PathLike[str], name: str) -> str:
    path = companion_path(model, name)
    if not path.is_file():
        raise ModelError(
            f"the {name!r} companion graph {path} does not exist beside {model}; export both with "
            "arr-coc-stream export" + (" and build both with export/build_trt.py" if path.suffix == ".engine" else "")
        )
    return str(path)


def _check_frame(frame: Any, index: int) -> np.ndarray:
    """The frame as given when it is an [H, W, 3] uint8 array with H, W >= 1; else the typed error naming it."""
    desc = f"{type(frame).__name__} {getattr(frame, 'shape', '')} {getattr(frame, 'dtype', '')}".strip()
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise InputTypeError(f"frame {index}: expected an HxWx3 uint8 RGB array, got {desc}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
        raise InputError(f"frame {index}: expected an HxWx3 uint8 RGB array with H, W >= 1, got {desc}")
    return frame


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise InputError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_size(size: Any, index: int) -> tuple[int, int]:
    """(H, W) of positive ints."""
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise InputTypeError(f"frame {index}: source_size must be (H, W), got {size!r}")
    return _check_int("source_size[0]", size[0], 1), _check_int("source_size[1]", size[1], 1)


def _check_time(time: Any, index: int) -> float:
    """A finite number of seconds, checked before anything is computed from it (NaN would poison the state)."""
    if isinstance(time, bool) or not isinstance(time, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"frame {index}: time must be a number of seconds, got {time!r} ({type(time).__name__})")
    if not math.isfinite(time):
        raise InputError(f"frame {index}: time must be finite, got {time!r}")
    return float(time)


def _check_state(state: dict[str, torch.Tensor], index: int, backend: str) -> None:
    """Raise :class:`ModelError` when a floating state tensor holds NaN or inf (one device sync for all)."""
    floats = {name: t for name, t in state.items() if t.is_floating_point()}
    finite = torch.stack([torch.isfinite(t).all() for t in floats.values()])
    if not bool(finite.all()):
        bad = [name for name, ok in zip(floats, finite.tolist()) if not ok]
        raise ModelError(
            f"frame {index}: the {backend} graph produced non-finite values in state {bad}; "
            "the state was left as it was before this frame"
        )
