"""Many streams through one graph call per step (DESIGN.md section 8: the graph is batch-first).

:class:`MultiEngine` keeps up to ``streams`` independent streams, each with its own state, clock, reset and
query, and runs the frames given to one :meth:`MultiEngine.process` call as one batch. A stream joins by giving
it a frame (or :meth:`MultiEngine.add` with its own query) and leaves with :meth:`MultiEngine.remove`; a slot
freed that way starts fresh for the next stream, and no other stream notices. Each stream's results are those of
its own :class:`~arr_coc_stream.engine.Engine` (the same selections and cuts; relevance within float rounding of
the batched kernels).

Examples:
    >>> import numpy as np, arr_coc_stream
    >>> multi = arr_coc_stream.MultiEngine(streams=2, k=32)
    >>> frames = {"cam1": np.zeros((96, 128, 3), np.uint8), "cam2": np.full((96, 128, 3), 200, np.uint8)}
    >>> results = multi.process({key: (f, 0.0) for key, f in frames.items()})
    >>> sorted(results), results["cam1"].relevance.shape
    (['cam1', 'cam2'], (32, 32))
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch

from .config import EngineConfig
from .engine import Engine, Slot, _engine_threads
from .errors import ConfigError
from .query import QueryHead
from .result import FrameResult

FrameLike = Any  # np.ndarray, (np.ndarray, time) or a sources.Frame


class MultiEngine:
    """Up to ``streams`` independent streams, one graph call per :meth:`process`.

    Args:
        streams: the most streams at once (B). A file backend's model must have ``batch_max >= streams``
            (export with ``--batch-max``).
        query: the query a stream gets when it joins without one.
        config: as for :class:`~arr_coc_stream.engine.Engine`; one graph (and one query head) serves every
            stream.
        backend: as for ``Engine``.
        model: as for ``Engine``.
        head: as for ``Engine``.
        **options: as for ``Engine``.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        streams: int,
        query: str | None = None,
        backend: str = "torch",
        model: str | os.PathLike[str] | None = None,
        head: QueryHead | None = None,
        **options: Any,
    ) -> None:
        if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
            raise ConfigError(f"streams must be an int >= 1, got {streams!r}")
        self.engine = Engine(config, query=query, backend=backend, model=model, head=head, **options)
        model_file = getattr(self.engine.runner, "model", None)
        if model_file is not None and model_file.batch_max < streams:
            raise ConfigError(
                f"streams={streams} exceeds {model_file.path.name}'s batch_max {model_file.batch_max}; "
                "re-export it with --batch-max"
            )
        self.config, self.streams, self.default_query = self.engine.config, streams, query
        self._slots: dict[Hashable, Slot] = {}

    @property
    def keys(self) -> list[Hashable]:
        """The streams present, in the order they joined."""
        return list(self._slots)

    def add(self, key: Hashable, query: str | None = None) -> None:
        """Start stream ``key`` in a free slot with fresh state and its own query (default: the engine's)."""
        if key in self._slots:
            raise ConfigError(f"stream {key!r} is already present")
        if len(self._slots) >= self.streams:
            raise ConfigError(f"all {self.streams} stream slots are taken ({self.keys}); remove one first")
        self._slots[key] = self.engine.new_slot(self.default_query if query is None else query)

    def remove(self, key: Hashable) -> None:
        """Stream ``key`` leaves; its slot is free (and fresh) for the next stream."""
        self._slot(key)
        del self._slots[key]

    def set_query(self, key: Hashable, query: str | None) -> None:
        """Change one stream's query from its next frame, its state kept."""
        self.engine.set_slot_query(self._slot(key), query)

    def reset(self, key: Hashable) -> None:
        """Start one stream's state over at its next frame."""
        self.engine.reset_slot(self._slot(key))

    def frames_processed(self, key: Hashable) -> int:
        return self._slot(key).count

    @_engine_threads
    @torch.inference_mode()
    def process(self, frames: Mapping[Hashable, FrameLike]) -> dict[Hashable, FrameResult]:
        """One frame for each of some streams, in one graph call.

        Args:
            frames: stream key -> its frame: an [H, W, 3] uint8 array (time: 30 fps after its previous frame),
                ``(array, time)``, or a :class:`~arr_coc_stream.sources.Frame` (its time, index, source size and
                reset are used). A key not present joins with the default query. Streams left out keep their state.

        Returns:
            stream key -> :class:`FrameResult`, in the order of ``frames``.

        Raises:
            ConfigError: more streams than slots. InputError / InputTypeError: a bad frame or time (no stream
                changes and none joins: every frame is checked before the graph runs).
        """
        joining = [key for key in frames if key not in self._slots]
        if len(self._slots) + len(joining) > self.streams:
            raise ConfigError(
                f"{len(joining)} new stream(s) {joining} do not fit: {len(self._slots)} of "
                f"{self.streams} slots are taken ({self.keys})"
            )
        slots = {key: self._slots.get(key) or self.engine.new_slot(self.default_query) for key in frames}
        steps = []
        for key, value in frames.items():
            rgb, time, extra = _unpack(value)
            steps.append(self.engine.begin(slots[key], rgb, time, **extra))
        if not steps:
            return {}
        self._slots.update({key: slots[key] for key in joining})  # every frame passed its checks
        out = self.engine.run_steps(steps)
        return {key: self.engine.finish(step, out, i) for i, (key, step) in enumerate(zip(frames, steps))}

    def header(self) -> dict[str, Any]:
        return {**self.engine.header(), "streams": self.streams}

    def _slot(self, key: Hashable) -> Slot:
        if key not in self._slots:
            raise ConfigError(f"no stream {key!r}; present: {self.keys}")
        return self._slots[key]


def _unpack(value: FrameLike) -> tuple[Any, float | None, dict[str, Any]]:
    """(rgb, time, keyword options) from an array, an (array, time) pair or a sources.Frame."""
    if isinstance(value, np.ndarray):
        return value, None, {}
    if isinstance(value, tuple) and len(value) == 2:
        return value[0], value[1], {}
    if hasattr(value, "rgb") and hasattr(value, "time"):
        return (
            value.rgb,
            value.time,
            {"index": value.index, "source_size": value.source_size, "reset": bool(getattr(value, "reset", False))},
        )
    return value, None, {}  # Engine.begin names what is wrong with it
