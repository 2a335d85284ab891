"""Frames from any iterable of arrays: :class:`IterableSource`, read on a background thread like a file.

Examples:
    >>> import numpy as np
    >>> with IterableSource(np.zeros((4, 60, 80, 3), np.uint8), fps=25.0, size=(30, 40)) as src:
    ...     print([(f.index, f.time, f.rgb.shape) for f in src][-1])
    (3, 0.12, (30, 40, 3))
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sized
from typing import cast

import cv2
import numpy as np

from ..errors import ConfigError, SourceError
from .base import DEFAULT_FPS, Frame, SourceInfo, ThreadedSource, _check_size

_EMPTY = object()  # marks an exhausted iterable, whose items may be anything (even None)


class IterableSource(ThreadedSource):
    """Frames from any iterable of uint8 (H, W, 3) arrays or :class:`Frame` objects (passed through unchanged).

    The first item is read on construction (on the caller's thread) to learn the frame size; the rest are read,
    checked and resized on a background thread, ``queue_size`` frames ahead of the consumer at most, so a slow
    generator (a capture loop, a decoder of its own) overlaps with the engine. An exception the iterable raises
    reaches the consumer after the frames before it. ``close()`` joins the thread (waiting for an item being
    read), then closes the iterable when it is a generator. Times are ``index / fps``, with ``fps = 30``
    (:data:`~arr_coc_stream.sources.base.DEFAULT_FPS`) when none is given.

    Args:
        frames: iterable of arrays (H, W, 3) uint8, or of :class:`Frame`.
        fps: frame rate for the times.
        size: (H, W) work size; arrays are resized with ``cv2.INTER_AREA``.
        keep_full: also return the original array in :attr:`Frame.full`.
        threads: read the iterable on a background thread; ``False`` reads it inline, on the consumer's thread
            (for an iterable that must stay on one thread, or for debugging).
        queue_size: frames read ahead of the consumer at most.

    Raises:
        SourceError: the iterable is empty, or an item is not a uint8 (H, W, 3) array (names the index).
        ConfigError: ``size``, ``fps`` or ``queue_size`` out of range.
    """

    thread_name = "arr_coc_stream-iterable"

    def __init__(
        self,
        frames: Iterable[np.ndarray | Frame],
        *,
        fps: float | None = None,
        size: tuple[int, int] | None = None,
        keep_full: bool = False,
        threads: bool = True,
        queue_size: int = 8,
    ) -> None:
        if fps is not None and not fps > 0:
            raise ConfigError(f"fps must be positive, got {fps!r}")
        self._size, self._fps, self._keep_full = _check_size(size), fps, keep_full
        super().__init__(threads=threads, queue_size=queue_size)
        self._it = iter(frames)
        first = next(self._it, _EMPTY)
        if first is _EMPTY:
            raise SourceError("the iterable of frames is empty")
        first_frame = self._to_frame(first, 0)
        self._first: Frame | None = first_frame
        h, w = first_frame.source_size
        self.info = SourceInfo(
            uri=f"<{type(frames).__name__}>",
            width=w,
            height=h,
            fps=fps,
            frames=len(cast(Sized, frames)) if hasattr(frames, "__len__") else None,
            codec=None,
            live=False,
        )

    def _to_frame(self, item: object, index: int) -> Frame:  # any item: checked here
        if isinstance(item, Frame):
            return item
        if not isinstance(item, np.ndarray):
            raise SourceError(f"frame {index}: expected a numpy array (H, W, 3) uint8, got {type(item).__name__}")
        if item.dtype != np.uint8:
            raise SourceError(f"frame {index}: expected dtype uint8, got {item.dtype}")
        if item.ndim != 3 or item.shape[2] != 3:
            raise SourceError(f"frame {index}: expected shape (H, W, 3), got {item.shape}")
        full = np.ascontiguousarray(item)
        rgb = full
        if self._size is not None:
            rgb = cv2.resize(full, self._size[::-1], interpolation=cv2.INTER_AREA)  # cv2 takes (W, H)
        return Frame(
            rgb=rgb,
            index=index,
            time=index / (self._fps or DEFAULT_FPS),
            source_size=full.shape[:2],
            full=full if self._keep_full else None,
        )

    def _produce(self) -> Generator[Frame, None, None]:
        first, self._first = self._first, None
        if first is not None:
            yield first
        for index, item in enumerate(self._it, start=1):
            yield self._to_frame(item, index)

    def _release(self) -> None:
        close = getattr(self._it, "close", None)  # a generator: run its cleanup (the thread is joined)
        if close is not None:
            close()
