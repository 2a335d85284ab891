"""The one hand-off between a source's producer thread and its consumer.

A :class:`Handoff` moves :class:`~arr_coc_stream.sources.base.Frame` objects from one producer thread (a decoder,
a network reader, a user's iterable) to one consumer (the engine's loop), paced one of two ways:

``every_frame``
    A bounded FIFO: :meth:`Handoff.put` waits while it is full, so nothing is dropped and a slow consumer slows
    the producer down (a file decodes ahead by at most ``size`` frames; a live stream drifts behind real time).
``latest_frame``
    A one-frame slot: a new frame replaces one the consumer has not taken yet, so a slow consumer always gets the
    newest frame. The new frame inherits the replaced frame's accounting (``dropped + 1``, its ``gap``, its
    ``reset``), so a reconnect or a loss is never hidden by the frame that replaced it.

The producer finishes with :meth:`Handoff.end` (its exception, or None); :meth:`Handoff.get` returns the frames
still held, then None, or re-raises the producer's exception in the consumer. Every wait is a short poll
(:data:`POLL_S`): a stopped consumer frees the producer at once, and Ctrl-C reaches a consumer that waits.

Examples:
    >>> import threading, numpy as np
    >>> from arr_coc_stream.sources.base import Frame
    >>> a, b = (Frame(np.zeros((2, 2, 3), np.uint8), index=i, time=i / 30, source_size=(2, 2)) for i in (0, 1))
    >>> h, stop = Handoff("latest_frame"), threading.Event()
    >>> h.put(a, stop), h.put(b, stop)  # b replaces a, which the consumer never took
    (0, 1)
    >>> h.end(None)
    >>> h.get() is b, b.dropped, h.get()
    (True, 1, None)
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError

if TYPE_CHECKING:  # types only: base.py imports this module
    from .base import Frame

Pacing = Literal["every_frame", "latest_frame"]
PACINGS: tuple[str, ...] = ("every_frame", "latest_frame")
POLL_S = 0.05  # how often a waiting thread checks whether the other side has stopped (and lets Ctrl-C in)


class Handoff:
    """Frames from one producer thread to one consumer, paced ``every_frame`` (FIFO) or ``latest_frame`` (slot).

    Args:
        pacing: ``"every_frame"`` (bounded FIFO, the producer waits, nothing dropped) or ``"latest_frame"``
            (one slot, a new frame replaces an untaken one).
        size: frames the FIFO holds at most (``every_frame``); the slot holds one.

    Attributes:
        replaced: frames replaced before the consumer took them, in all (``latest_frame`` only).

    Raises:
        ConfigError: an unknown ``pacing`` or ``size`` below 1.
    """

    def __init__(self, pacing: Pacing = "every_frame", size: int = 8) -> None:
        if pacing not in PACINGS:
            raise ConfigError(f"pacing must be one of {PACINGS}, got {pacing!r}")
        if size < 1:
            raise ConfigError(f"queue_size must be at least 1, got {size}")
        self.pacing = pacing
        self.replaced = 0
        self._latest = pacing == "latest_frame"
        self._size = 1 if self._latest else size
        self._cond = threading.Condition()  # one lock for both sides: one producer and one consumer wait on it
        self._frames: deque[Frame] = deque()
        # the producer's outcome, kept beside the frames (not queued after them): ending never waits for room,
        # so a stopped producer always ends and a waiting consumer always learns it
        self._end: BaseException | bool = False  # an exception, or True at a clean end

    def put(self, frame: Frame, stop: threading.Event) -> int:
        """Hand ``frame`` over (producer thread); waits for room in ``every_frame`` pacing until ``stop`` is set.

        Returns:
            Frames ``frame`` replaced: 0, or 1 when ``latest_frame`` pacing replaced an untaken frame. A frame
            given once ``stop`` is set and the FIFO is full is not stored (the consumer has gone).
        """
        with self._cond:
            if self._latest and self._frames:
                old = self._frames.pop()
                # what the consumer must still learn about: the replaced frame and its own losses
                frame.dropped += old.dropped + 1
                frame.gap += old.gap
                frame.reset = frame.reset or old.reset
                self._frames.append(frame)
                self.replaced += 1
                self._cond.notify_all()
                return 1
            while len(self._frames) >= self._size:
                if stop.is_set():
                    return 0
                self._cond.wait(POLL_S)
            self._frames.append(frame)
            self._cond.notify_all()
            return 0

    def end(self, error: BaseException | None) -> None:
        """Mark the producer done (producer thread): ``error`` is re-raised by :meth:`get` after the held frames."""
        with self._cond:
            self._end = error if error is not None else True
            self._cond.notify_all()

    def get(self) -> Frame | None:
        """The next frame (consumer thread), waiting for one; None at the end; re-raises the producer's error."""
        with self._cond:
            while not self._frames and self._end is False:
                self._cond.wait(POLL_S)  # short waits: Ctrl-C reaches the consumer while it waits
            if self._frames:
                frame = self._frames.popleft()
                self._cond.notify_all()  # a producer waiting for room
                return frame
            if isinstance(self._end, BaseException):
                raise self._end
            return None
