"""Video sources: where frames come from.

A :class:`Source` is a context manager and a one-pass iterator of :class:`Frame` objects described by a
:class:`SourceInfo`. This file holds the file source (PyAV, decoded on a background thread), the source over any
iterable of arrays, :func:`open_source` that picks one for a user's argument, and :func:`probe_decode_fps`
(decode-only throughput, the benchmark's reference). Live sources (camera, RTSP, HTTP, TCP) live in
:mod:`arr_coc_stream.live` behind the same interface; ``SourceInfo.live`` tells them apart.

Example:
    >>> with open_source("clip.mp4", size=(256, 256)) as src:  # doctest: +SKIP
    ...     for frame in src:
    ...         print(frame.index, frame.time, frame.rgb.shape)  # (256, 256, 3)
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2  # before av: the other order can hang cv2.imshow (DESIGN.md section 11)
import av
import numpy as np

from .errors import ConfigError, SourceError

DEFAULT_FPS = 30.0  # frame rate assumed for times when a source has no timestamps and no declared rate
LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "tcp://")
_PUT_POLL_S = 0.05  # how often a blocked producer checks whether the consumer has gone
_EMPTY = object()  # marks an exhausted iterable, whose items may be anything (even None)


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
    """A context manager and one-pass iterator of :class:`Frame`; ``close()`` releases everything it holds."""

    info: SourceInfo

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
    if size is None:
        return None
    if len(size) != 2 or any(int(v) != v or v < 1 for v in size):
        raise ConfigError(f"size must be (height, width) of positive integers, got {size!r}")
    return int(size[0]), int(size[1])


class ThreadedSource(Source):
    """Base of the sources fed by one background thread: its stop flag, joining it, and a close that runs once.

    Subclasses start ``self._thread`` on iteration and release their files and connections in :meth:`_release`.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = self._closed = False

    def _start_once(self, name: str) -> None:
        """Mark the one pass over the source as begun; a closed or already iterated source is an error."""
        if self._closed:
            raise SourceError(f"source {name!r} is closed")
        if self._started:
            raise SourceError(f"source {name!r} can be iterated only once")
        self._started = True

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

    @abstractmethod
    def _release(self) -> None:
        """Close files and connections (the thread is joined)."""


class VideoFileSource(ThreadedSource):
    """Frames of a video file, decoded by PyAV (``thread_type="AUTO"``) on a background thread.

    The first frame is decoded on open: av 18 exposes the display rotation only on decoded frames
    (``VideoFrame.rotation``, counter-clockwise degrees from the DISPLAYMATRIX side data), and a file with no
    decodable frame fails here rather than mid-run. The rotation of the first frame, rounded to a multiple of 90
    degrees, applies to the whole stream; mirror flips in the display matrix are ignored. A packet the decoder
    rejects is skipped and counted in ``corrupt_packets``. Not thread-safe: iterate and close from one thread.

    Args:
        path: video file.
        size: (H, W) work size; PyAV returns frames already area-resized to it (libswscale, ``AREA``).
        keep_full: also return the full-resolution frame in :attr:`Frame.full`.
        threads: decode on a background thread; ``False`` decodes inline (simplest path, for debugging).
        queue_size: frames decoded ahead of the consumer at most.

    Raises:
        SourceError: missing or unreadable file, no video stream, no decodable frame, read error mid-stream.
        ConfigError: ``size`` or ``queue_size`` out of range.
    """

    def __init__(self, path: str | os.PathLike[str], *, size: tuple[int, int] | None = None, keep_full: bool = False,
                 threads: bool = True, queue_size: int = 8) -> None:
        self.path = os.fspath(path)
        self._size = _check_size(size)
        if queue_size < 1:
            raise ConfigError(f"queue_size must be at least 1, got {queue_size}")
        self._keep_full, self._threads, self._queue_size = keep_full, threads, queue_size
        self.corrupt_packets = 0
        super().__init__()
        if not os.path.exists(self.path):
            raise SourceError(f"no such file: {self.path!r}")
        try:
            self._container = av.open(self.path, mode="r")
        except (av.FFmpegError, OSError) as e:
            raise SourceError(f"not a video file or unreadable: {self.path!r} ({e})") from e
        try:
            if not self._container.streams.video:
                raise SourceError(f"no video stream in {self.path!r}")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            self._decoded = self._decode(stream)
            self._first = next(self._decoded, None)
            if self._first is None:
                raise SourceError(f"{self.path!r} contains no decodable frames")
        except BaseException:
            self._container.close()
            raise
        self._quarter_turns = round(self._first.rotation / 90) % 4  # np.rot90 turns counter-clockwise too
        h, w = self._first.height, self._first.width
        if self._quarter_turns % 2:
            h, w = w, h
        rate = stream.average_rate or stream.guessed_rate
        self._start_pts = stream.start_time or 0
        self._time_base = stream.time_base
        self.info = SourceInfo(uri=self.path, width=w, height=h, fps=float(rate) if rate else None,
                               frames=stream.frames or None, codec=stream.codec_context.name, live=False)

    def _decode(self, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
        """Yield decoded frames, skipping (and counting) packets the decoder rejects."""
        try:
            for packet in self._container.demux(stream):
                try:
                    yield from packet.decode()
                except av.FFmpegError:
                    self.corrupt_packets += 1
        except av.FFmpegError as e:
            raise SourceError(f"read error in {self.path!r}: {e}") from e

    def _to_frame(self, vf: av.VideoFrame, index: int) -> Frame:
        rgb, full = av_frame_to_rgb(vf, self._size, self._keep_full, self._quarter_turns)
        if vf.pts is not None:
            t = float((vf.pts - self._start_pts) * self._time_base)
        else:
            t = index / (self.info.fps or DEFAULT_FPS)
        return Frame(rgb=rgb, index=index, time=t, source_size=(self.info.height, self.info.width), full=full)

    def _frames(self) -> Iterator[Frame]:
        for index, vf in enumerate(itertools.chain((self._first,), self._decoded)):
            yield self._to_frame(vf, index)

    def __iter__(self) -> Iterator[Frame]:
        self._start_once(self.path)
        return self._threaded() if self._threads else self._frames()

    def _threaded(self) -> Iterator[Frame]:
        """Hand frames from the decode thread to the caller; the worker's error is re-raised here."""
        q: queue.Queue[Any] = queue.Queue(self._queue_size)
        end = object()

        def put(item: object) -> bool:
            while not self._stop.is_set():
                try:
                    q.put(item, timeout=_PUT_POLL_S)
                    return True
                except queue.Full:
                    pass
            return False

        def work() -> None:
            try:
                for frame in self._frames():
                    if not put(frame):
                        return
            except BaseException as e:  # frames are never exceptions: the caller tells them apart and re-raises
                put(e)
                return
            put(end)

        # daemon: a source the user never closes must not keep the interpreter alive
        self._thread = threading.Thread(target=work, name="arr_coc_stream-decode", daemon=True)
        self._thread.start()
        try:
            while True:
                try:
                    item = q.get(timeout=_PUT_POLL_S)
                except queue.Empty:
                    if self._thread.is_alive() or not q.empty():
                        continue
                    break  # the worker was stopped by close()
                if item is end:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._join()

    def _release(self) -> None:
        self._decoded.close()
        self._container.close()


def av_frame_to_rgb(vf: av.VideoFrame, size: tuple[int, int] | None, keep_full: bool,
                    quarter_turns: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert a decoded frame to RGB arrays, turned ``quarter_turns`` x 90 degrees counter-clockwise.

    Returns:
        (rgb, full): rgb [h, w, 3] uint8 at ``size`` (area-resized by libswscale before turning) or at full
        size without one; full [H, W, 3] uint8 when ``keep_full``, else None. Both C-contiguous.
    """
    k = quarter_turns
    full = None
    if size is None or keep_full:
        full = np.ascontiguousarray(np.rot90(vf.to_ndarray(format="rgb24"), k))
    if size is None:
        return full, full if keep_full else None
    h, w = size if k % 2 == 0 else size[::-1]  # resize before rotating
    small = vf.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    return np.ascontiguousarray(np.rot90(small, k)), full


class IterableSource(Source):
    """Frames from any iterable of uint8 (H, W, 3) arrays or :class:`Frame` objects (passed through unchanged).

    The first item is read on construction to learn the frame size. Times are ``index / fps``, with
    ``fps = 30`` (:data:`DEFAULT_FPS`) when none is given.

    Args:
        frames: iterable of arrays (H, W, 3) uint8, or of :class:`Frame`.
        fps: frame rate for the times.
        size: (H, W) work size; arrays are resized with ``cv2.INTER_AREA``.
        keep_full: also return the original array in :attr:`Frame.full`.

    Raises:
        SourceError: the iterable is empty, or an item is not a uint8 (H, W, 3) array (names the index).
        ConfigError: ``size`` or ``fps`` out of range.
    """

    def __init__(self, frames: Iterable[np.ndarray | Frame], *, fps: float | None = None,
                 size: tuple[int, int] | None = None, keep_full: bool = False) -> None:
        if fps is not None and not fps > 0:
            raise ConfigError(f"fps must be positive, got {fps!r}")
        self._size, self._fps, self._keep_full = _check_size(size), fps, keep_full
        self._it = iter(frames)
        first = next(self._it, _EMPTY)
        if first is _EMPTY:
            raise SourceError("the iterable of frames is empty")
        first_frame = self._to_frame(first, 0)
        self._first: Frame | None = first_frame
        h, w = first_frame.source_size
        self.info = SourceInfo(uri=f"<{type(frames).__name__}>", width=w, height=h, fps=fps,
                               frames=len(frames) if hasattr(frames, "__len__") else None, codec=None, live=False)

    def _to_frame(self, item: np.ndarray | Frame, index: int) -> Frame:
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
        return Frame(rgb=rgb, index=index, time=index / (self._fps or DEFAULT_FPS), source_size=full.shape[:2],
                     full=full if self._keep_full else None)

    def __iter__(self) -> Iterator[Frame]:
        first, self._first = self._first, None
        if first is not None:
            yield first
        for index, item in enumerate(self._it, start=1):
            yield self._to_frame(item, index)

    def close(self) -> None:
        """Close the wrapped iterator when it is a generator."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def open_source(source: Any, *, size: tuple[int, int] | None = None, keep_full: bool = False) -> Source:
    """Open what the user passed: a path, a live source, a :class:`Source`, or an iterable of frames.

    Args:
        source: a video path (``str`` / ``os.PathLike``), a :class:`Source` (returned as is, ``size`` and
            ``keep_full`` then left to it), or an iterable of uint8 (H, W, 3) arrays or :class:`Frame`.
        size: (H, W) work size for the frames.
        keep_full: also return full-resolution frames.

    Returns:
        The opened source; close it (or use it as a context manager).

    Live sources (a camera index or ``/dev/`` path, an ``rtsp://``, ``http(s)://`` or ``tcp://`` URL) open with
    :func:`arr_coc_stream.live.open_live`'s defaults (``latest_frame`` pacing, reconnection); build a
    :class:`~arr_coc_stream.live.StreamSource` or :class:`~arr_coc_stream.live.CameraSource` for other settings.

    Raises:
        SourceError: a file or stream that cannot be opened, or a type that is not a source.
    """
    if isinstance(source, Source):
        return source
    if (isinstance(source, int) and not isinstance(source, bool)) or (isinstance(source, str) and (
            source.lower().startswith(LIVE_SCHEMES) or source.startswith("/dev/"))):
        from .live import open_live  # live imports this module

        return open_live(source, size=size, keep_full=keep_full)
    if isinstance(source, (str, os.PathLike)):
        return VideoFileSource(source, size=size, keep_full=keep_full)
    if isinstance(source, Iterable) and not isinstance(source, (bytes, bytearray)):
        return IterableSource(source, size=size, keep_full=keep_full)
    raise SourceError(f"cannot open a source from a {type(source).__name__}: pass a path or an iterable of frames")


def probe_decode_fps(path: str | os.PathLike[str], size: tuple[int, int] | None = None,
                     max_frames: int | None = None) -> tuple[int, float]:
    """Measure decode-only throughput of :class:`VideoFileSource` (opening included), the benchmark's reference.

    Args:
        path: video file.
        size: (H, W) work size, as the engine would ask for it.
        max_frames: stop after this many frames.

    Returns:
        (frames decoded, frames per second).

    Raises:
        SourceError: as :class:`VideoFileSource`.
        ConfigError: ``max_frames`` below 1.
    """
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames must be at least 1, got {max_frames}")
    t0 = time.perf_counter()
    n = 0
    with VideoFileSource(path, size=size) as src:
        for _ in src:
            n += 1
            if max_frames is not None and n >= max_frames:
                break
    return n, n / (time.perf_counter() - t0)
