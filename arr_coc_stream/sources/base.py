"""What every source shares: the :class:`Frame` and :class:`SourceInfo` records, the :class:`Source` interface and
:class:`ThreadedSource`, the one place a producer thread is started, fed into a
:class:`~arr_coc_stream.sources.handoff.Handoff`, stopped and joined.

:data:`DEFAULT_FPS` is the package's one frame rate assumed for times when a source has neither timestamps nor a
declared rate; other modules import it from here.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, SourceError
from .handoff import Handoff, Pacing

DEFAULT_FPS = 30.0  # frame rate assumed for times when a source has no timestamps and no declared rate
LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "tcp://")  # URL prefixes opened as live streams


@dataclass(eq=False)  # eq=False: comparing arrays field by field is ambiguous; frames compare by identity
class Frame:
    """One decoded frame.

    Attributes:
        rgb: uint8 array (H, W, 3), C-contiguous; at the requested work size when the source resizes, else full.
        index: 0-based index of the frame among the source's decoded frames.
        time: seconds since the stream's start, from the frame's timestamp (``index / fps`` without one).
        source_size: (H, W) of the original frame, after display rotation.
        full: the full-resolution uint8 (H, W, 3) frame when the source was opened with ``keep_full=True``.
        reset: the stream restarted before this frame (a live source reconnected): temporal state starts over.
        gap: seconds without frames before this one (a live source's drop: from ``time - gap`` to ``time``).
        dropped: frames lost just before this one (a live source: skipped by ``latest_frame`` pacing, or
            estimated lost in a gap); ``index`` jumps by ``dropped + 1``.
        received: ``time.monotonic()`` when a live source received the frame (for latency), else None.
    """

    rgb: np.ndarray
    index: int
    time: float
    source_size: tuple[int, int]
    full: np.ndarray | None = None
    reset: bool = False
    gap: float = 0.0
    dropped: int = 0
    received: float | None = None


@dataclass(frozen=True)
class SourceInfo:
    """What a source knows about its stream.

    Attributes:
        uri: the path, URL or a ``<type>`` tag for an iterable.
        width, height: frame size of the source, after display rotation.
        fps: average frame rate, fractional (29.97 stays 29.97); None when unknown.
        frames: frame count declared by the container; None when unknown.
        codec: decoder name (``"h264"``); None for arrays.
        live: a camera or network stream (an end of data is a drop, not the end).
    """

    uri: str
    width: int
    height: int
    fps: float | None
    frames: int | None
    codec: str | None
    live: bool


class Source(ABC):
    """A context manager and one-pass iterator of :class:`Frame`; ``close()`` releases everything it holds.

    Attributes:
        info: what the source knows about its stream.
        incomplete: set when the iteration ends: why the source ended before its end (a truncated or damaged
            file, naming the last good frame); None when it was read to its end.
    """

    info: SourceInfo
    incomplete: str | None = None

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]:
        """Yield the frames in source order (one pass)."""

    @abstractmethod
    def close(self) -> None:
        """Release threads, files and connections; safe to call more than once."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate a work size: (height, width) of positive integers, or None for the source's own size.

    Raises:
        ConfigError: anything else.
    """
    if size is None:
        return None
    if len(size) != 2 or any(int(v) != v or v < 1 for v in size):
        raise ConfigError(f"size must be (height, width) of positive integers, got {size!r}")
    return int(size[0]), int(size[1])


class ThreadedSource(Source):
    """Base of the sources fed by one producer thread through a :class:`Handoff`.

    A subclass yields its frames from :meth:`_produce` and releases its files and connections in :meth:`_release`.
    Iterating starts a daemon thread named :attr:`thread_name` that runs :meth:`_produce` into the hand-off and
    returns the consumer: a generator that takes frames from the hand-off, re-raises the producer's exception,
    and stops and joins the thread when it ends, however it ends (exhausted, broken out of, failed, collected).
    With ``threads=False`` :meth:`_produce` runs inline on the caller's thread instead. A source iterates once;
    :meth:`close` runs once: it stops and joins the thread, then calls :meth:`_release`.

    Not thread-safe: iterate and close from one thread. The producer checks ``self._stop`` when it can block
    outside the hand-off (a network read), so that :meth:`close` does not wait long.

    Args:
        threads: produce on a background thread; ``False`` produces inline (simplest path, for debugging).
        pacing: how the hand-off paces frames (:mod:`~arr_coc_stream.sources.handoff`).
        queue_size: frames the producer may run ahead of the consumer in ``every_frame`` pacing.

    Raises:
        ConfigError: ``pacing`` or ``queue_size`` out of range.
    """

    thread_name = "arr_coc_stream-source"  # threads are named arr_coc_stream-* (tests look for leftovers)

    def __init__(self, *, threads: bool = True, pacing: Pacing = "every_frame", queue_size: int = 8) -> None:
        self._handoff = Handoff(pacing, queue_size)
        self._threads = threads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = self._closed = False

    @abstractmethod
    def _produce(self) -> Generator[Frame, None, None]:
        """Yield the frames in order (on the worker thread, or inline); stop early when ``self._stop`` is set."""

    @abstractmethod
    def _release(self) -> None:
        """Close files and connections (the thread is joined)."""

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise SourceError(f"source {self.info.uri!r} is closed")
        if self._started:
            raise SourceError(f"source {self.info.uri!r} can be iterated only once")
        self._started = True
        if not self._threads:
            return self._produce()
        # daemon: a source the user never closes must not keep the interpreter alive
        self._thread = threading.Thread(target=self._work, name=self.thread_name, daemon=True)
        self._thread.start()
        return self._consume()

    def _work(self) -> None:
        """The worker thread: hand the producer's frames over; its exception (or the end) goes to the consumer."""
        error: BaseException | None = None
        try:
            # closing(): a producer stopped early is closed here, so its own cleanup runs on this thread
            with contextlib.closing(self._produce()) as frames:
                for frame in frames:
                    self._handoff.put(frame, self._stop)
                    if self._stop.is_set():
                        return
        except BaseException as e:  # frames are never exceptions: the consumer tells them apart and re-raises
            error = e
        finally:
            self._handoff.end(error)

    def _consume(self) -> Iterator[Frame]:
        try:
            while (frame := self._handoff.get()) is not None:
                yield frame
        finally:
            self._join()

    def _join(self) -> None:
        self._stop.set()
        # the generator's finally may run in the garbage collector on any thread, the worker's own included
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def close(self) -> None:
        """Stop and join the background thread, then release files and connections; safe to call again."""
        if self._closed:
            return
        self._closed = True
        self._join()
        self._release()
