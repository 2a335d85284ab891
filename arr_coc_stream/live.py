"""Live sources: a camera through OpenCV and network streams (RTSP, HTTP, TCP) through PyAV.

A live source is a :class:`~arr_coc_stream.sources.Source` like a file: a context manager and a one-pass iterator
of :class:`~arr_coc_stream.sources.Frame`. A reader thread owns the connection; it reads, hands frames to the
consumer by the source's pacing, and reconnects when the stream drops.

Pacing (:attr:`LiveConfig.pacing`):
    ``latest_frame`` (the default): the reader keeps only the newest frame, so a consumer slower than the stream
        always gets the most recent frame and never falls behind. The frames it replaced are counted in
        :attr:`Frame.dropped` of the frame delivered next and in :attr:`LiveSource.dropped`.
    ``every_frame``: a bounded queue; the reader waits for the consumer, so nothing is dropped (the network or
        the camera driver buffers, and a slow consumer drifts behind real time).

Drops: an end of data, a read error or a read timeout is a drop, not the end of the stream. The reader closes
the connection and reconnects after ``backoff_s``, doubling the wait up to ``backoff_max_s``, and gives up with
a :class:`~arr_coc_stream.errors.SourceError` after ``reconnect_attempts`` attempts in a row that failed or
brought no frame. The first frame after a reconnect has ``reset=True`` (the engine starts its temporal state
over), ``gap`` = seconds since the last frame before the drop, and ``dropped`` includes the frames lost in the
gap (estimated from the frame rate); when ``latest_frame`` pacing replaces that frame, the frame delivered next
carries all three. No frame is ever made up for a gap: black or repeated frames would look like scene cuts. The
first open is not retried: an address that never answers fails after ``open_timeout_s``.

Times: seconds since the first frame. Within one connection they follow the stream's timestamps (fractional
rates stay exact); across a reconnect, whose timestamps restart, they follow the wall clock. Frame indices count
every frame read plus the frames estimated lost in gaps, so ``index`` jumps by ``dropped + 1``.

Example:
    >>> import arr_coc_stream
    >>> from arr_coc_stream.live import StreamSource
    >>> src = StreamSource("rtsp://127.0.0.1:8554/stream", size=(256, 256))  # doctest: +SKIP
    >>> for r in arr_coc_stream.stream(src, query="red", max_frames=100):  # doctest: +SKIP
    ...     print(r.index, r.dropped, r.gap)
"""

from __future__ import annotations

import queue
import threading
import time
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import cv2  # before av: the other order can hang cv2.imshow (DESIGN.md section 11)
import av
import numpy as np

from .errors import ConfigError, SourceError
from .sources import LIVE_SCHEMES, Frame, SourceInfo, ThreadedSource, _check_size, av_frame_to_rgb

Pacing = Literal["every_frame", "latest_frame"]
PACINGS: tuple[str, ...] = ("every_frame", "latest_frame")
TRANSPORTS: tuple[str, ...] = ("tcp", "udp")
_POLL_S = 0.05  # how often a blocked thread checks whether the other side has stopped

# Low-latency demuxing: a short probe (half a second of a live stream is enough to find its codec parameters) and
# the decoder's low-delay mode.
LOW_LATENCY_OPTIONS = {"flags": "low_delay", "probesize": "500000", "analyzeduration": "500000"}
# latest_frame pacing also discards the packets read while probing: decoded, they would be its first frames, half
# a second old. The price: the first frame waits for the stream's next keyframe. every_frame keeps them (it drops
# nothing, and a stream shorter than the probe would otherwise decode nothing).
_LATEST_FRAME_OPTIONS = {"fflags": "nobuffer"}
# UDP delivers out of order; a 100 ms reorder buffer instead of FFmpeg's default 500 ms keeps latency low.
_UDP_OPTIONS = {"max_delay": "100000"}


@dataclass(frozen=True)
class LiveConfig:
    """How a live source paces, times out and reconnects.

    Attributes:
        pacing: ``"latest_frame"`` (keep only the newest frame) or ``"every_frame"`` (drop nothing).
        open_timeout_s: seconds an open (connect, handshake, stream probe) may take.
        read_timeout_s: seconds a read may wait for data before the stream counts as dropped.
        reconnect_attempts: failed reconnection attempts in a row before giving up; None retries forever.
        backoff_s: wait before the first reconnection attempt; doubles after each failure.
        backoff_max_s: the longest wait between attempts.
        queue_size: frames buffered ahead of the consumer in ``every_frame`` pacing.
    """

    pacing: Pacing = "latest_frame"
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_attempts: int | None = 10
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    queue_size: int = 8

    def __post_init__(self) -> None:
        if self.pacing not in PACINGS:
            raise ConfigError(f"pacing must be one of {PACINGS}, got {self.pacing!r}")
        for name in ("open_timeout_s", "read_timeout_s", "backoff_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.backoff_max_s < self.backoff_s:
            raise ConfigError(f"backoff_max_s ({self.backoff_max_s}) is below backoff_s ({self.backoff_s})")
        if self.reconnect_attempts is not None and self.reconnect_attempts < 0:
            raise ConfigError(f"reconnect_attempts must be >= 0 or None, got {self.reconnect_attempts}")
        if self.queue_size < 1:
            raise ConfigError(f"queue_size must be at least 1, got {self.queue_size}")


@dataclass
class _Raw:
    """A frame as a backend reads it, before the source gives it an index, a time and drop accounting."""

    rgb: np.ndarray  # [h, w, 3] uint8 at the work size (full size without one)
    full: np.ndarray | None  # [H, W, 3] uint8 when keep_full
    source_size: tuple[int, int]  # (H, W) of this frame, after rotation
    stamp: float | None  # the stream's own timestamp in seconds, None when it has none


class _Latest:
    """A one-frame slot: a new frame replaces an untaken one, which is counted as dropped on the new one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._end: BaseException | bool = False  # an error, or True at the end

    def put(self, frame: Frame, stop: threading.Event) -> int:
        """Store ``frame``; return how many frames it replaced (0 or 1)."""
        with self._cond:
            old, self._frame = self._frame, frame
            if old is not None:  # what the consumer must still learn about: the replaced frame and its own losses
                frame.dropped += old.dropped + 1
                frame.gap += old.gap
                frame.reset = frame.reset or old.reset
            self._cond.notify()
        return int(old is not None)

    def end(self, error: BaseException | None, stop: threading.Event) -> None:
        with self._cond:
            self._end = error if error is not None else True
            self._cond.notify()

    def get(self) -> Frame | None:
        """The newest frame not taken yet, waiting for one; None at the end; re-raises the reader's error."""
        with self._cond:
            while self._frame is None and self._end is False:
                self._cond.wait(_POLL_S)
            frame, self._frame = self._frame, None
            if frame is not None:
                return frame
            if isinstance(self._end, BaseException):
                raise self._end
            return None


class _Fifo:
    """A bounded queue: the reader waits while it is full (``every_frame`` pacing)."""

    def __init__(self, size: int) -> None:
        self._q: queue.Queue[Any] = queue.Queue(size)

    def put(self, item: Any, stop: threading.Event) -> int:
        while not stop.is_set():
            try:
                self._q.put(item, timeout=_POLL_S)
                return 0
            except queue.Full:
                pass
        return 0

    def end(self, error: BaseException | None, stop: threading.Event) -> None:
        self.put(error if error is not None else _END, stop)

    def get(self) -> Frame | None:
        while True:  # short waits: Ctrl-C reaches the consumer while it waits
            try:
                item = self._q.get(timeout=_POLL_S)
                break
            except queue.Empty:
                pass
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item


_END = object()


class LiveSource(ThreadedSource):
    """Base of the live sources: the reader thread, pacing, reconnection, times, indices and gap accounting.

    A subclass opens a connection (:meth:`_connect`, raising :class:`SourceError`), reads it (:meth:`_read`,
    ending at a drop) and closes it (:meth:`_disconnect`). The first connection is opened by the constructor,
    so a bad address fails at once; reading starts on iteration. Not thread-safe: iterate and close from one
    thread. ``close()`` waits for the reader, at most about ``max(open_timeout_s, read_timeout_s)``.

    Attributes:
        dropped: frames replaced before the consumer took them (``latest_frame`` pacing).
        lost: frames estimated lost in gaps (drops and reconnects).
        reconnects: successful reconnections.
        corrupt_packets: packets the decoder rejected (skipped).
    """

    info: SourceInfo

    def __init__(self, uri: str, *, size: tuple[int, int] | None, keep_full: bool, config: LiveConfig | None) -> None:
        self.uri = uri
        self.config = config or LiveConfig()
        self._size = _check_size(size)
        self._keep_full = keep_full
        self.dropped = self.lost = self.reconnects = self.corrupt_packets = 0
        super().__init__()
        self._handoff: _Latest | _Fifo = (_Latest() if self.config.pacing == "latest_frame"
                                          else _Fifo(self.config.queue_size))
        # reader-thread state: the next index, the last frame's time, the current connection's time anchor
        self._next_index = 0
        self._last: tuple[float, float] | None = None  # (time, monotonic arrival) of the last frame read
        self._anchor: tuple[float, float] | None = None  # (time, stamp) of this connection's first stamped frame
        self._reconnected = False  # the next frame is the first after a reconnect: it reports the gap
        self._conn = self._connect()

    @abstractmethod
    def _connect(self) -> Any:
        """Open a connection; raise :class:`SourceError` when it cannot be opened."""

    @abstractmethod
    def _read(self, conn: Any) -> Iterator[_Raw]:
        """Yield frames until the stream drops (end of data, error, timeout); raise :class:`SourceError` on errors."""

    @abstractmethod
    def _disconnect(self, conn: Any) -> None:
        """Release a connection; must not raise."""

    def __iter__(self) -> Iterator[Frame]:
        self._start_once(self.uri)
        # daemon: a source the user never closes must not keep the interpreter alive
        self._thread = threading.Thread(target=self._work, name="arr_coc_stream-live", daemon=True)
        self._thread.start()
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        try:
            while True:
                frame = self._handoff.get()
                if frame is None:
                    return
                yield frame
        finally:
            self._join()

    def _work(self) -> None:
        """The reader thread: read, hand off, reconnect; its error goes to the consumer."""
        conn, self._conn = self._conn, None
        error: BaseException | None = None
        failures = 0  # reconnection attempts in a row that brought no frame
        try:
            while conn is not None:
                frames = 0
                try:
                    for raw in self._read(conn):
                        if self._stop.is_set():
                            return
                        frames += 1
                        self.dropped += self._handoff.put(self._to_frame(raw), self._stop)
                except SourceError:
                    pass  # a read error is a drop like the end of data: reconnect below
                finally:
                    self._disconnect(conn)
                    conn = None
                if self._stop.is_set():
                    return
                # a connection that opens but never delivers a frame counts as a failed attempt, so a server
                # that accepts and hangs up cannot keep the source reconnecting forever
                conn, failures = self._reconnect(failures if frames == 0 else 0)
        except BaseException as e:  # frames are never exceptions: the consumer tells them apart and re-raises
            error = e
        finally:
            if conn is not None:
                self._disconnect(conn)
            self._handoff.end(error, self._stop)

    def _reconnect(self, failures: int) -> tuple[Any, int]:
        """Reopen with exponential backoff after ``failures`` failed attempts in a row.

        Returns:
            (connection, failures so far, this attempt included); the connection is None when stopped.

        Raises:
            SourceError: ``reconnect_attempts`` attempts in a row failed.
        """
        cfg, last = self.config, None
        while cfg.reconnect_attempts is None or failures < cfg.reconnect_attempts:
            if self._stop.wait(min(cfg.backoff_s * 2 ** min(failures, 30), cfg.backoff_max_s)):
                return None, failures
            failures += 1
            try:
                conn = self._connect()
            except SourceError as e:
                last = e
                continue
            self.reconnects += 1
            self._reconnected = True
            return conn, failures
        raise SourceError(f"{self.uri}: stream dropped and {failures} reconnection attempt(s) in a row failed or "
                          "brought no frame" + (f"; last error: {last}" if last else ""))

    def _to_frame(self, raw: _Raw) -> Frame:
        """Give a read frame its index, time and gap accounting (reader thread)."""
        now = time.monotonic()
        gap, lost, reset = 0.0, 0, False
        if self._reconnected and self._last is not None:
            # across a reconnect the stream's stamps restart: the wall clock measures the gap
            t = self._last[0] + (now - self._last[1])
            gap, reset = t - self._last[0], True
            fps = self.info.fps
            lost = max(0, round(gap * fps) - 1) if fps else 0
            self._anchor = (t, raw.stamp) if raw.stamp is not None else None
        elif self._last is None:
            t = 0.0
            self._anchor = (t, raw.stamp) if raw.stamp is not None else None
        elif self._anchor is not None and raw.stamp is not None and raw.stamp > self._anchor[1]:
            t = max(self._anchor[0] + raw.stamp - self._anchor[1], self._last[0])
        else:  # no usable stamp: arrival times, kept monotonic
            t = self._last[0] + (now - self._last[1])
            if self._anchor is None and raw.stamp is not None:
                self._anchor = (t, raw.stamp)
        self._reconnected = False
        self.lost += lost
        index = self._next_index + lost
        self._next_index = index + 1
        self._last = (t, now)
        return Frame(rgb=raw.rgb, index=index, time=t, source_size=raw.source_size, full=raw.full, reset=reset,
                     gap=gap, dropped=lost, received=now)

    def _release(self) -> None:
        if self._conn is not None:  # never iterated: the constructor's connection is still here
            self._disconnect(self._conn)
            self._conn = None


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages, logs and JSONL headers)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class StreamSource(LiveSource):
    """A network stream through PyAV: ``rtsp://`` (``rtsps://``), ``http(s)://`` or ``tcp://``.

    Every open and read has a timeout (PyAV's ``timeout=(open, read)``); demuxing uses
    :data:`LOW_LATENCY_OPTIONS` (and ``fflags=nobuffer`` in ``latest_frame`` pacing: the first frame is a fresh
    one, after the stream's next keyframe), and the decoder uses slice threads only (frame threads would delay
    every frame by a frame per thread). The display rotation of each frame is applied.

    Args:
        url: the stream's address. A password in it is redacted from messages and :attr:`info`.
        size: (H, W) work size; PyAV returns frames already area-resized to it.
        keep_full: also return the full-resolution frame in :attr:`Frame.full`.
        transport: RTSP transport, ``"tcp"`` (interleaved on the RTSP connection: no loss) or ``"udp"``.
        options: more FFmpeg demuxer options; they override the defaults.
        config: pacing, timeouts and reconnection.

    Raises:
        SourceError: the address does not answer within ``open_timeout_s``, refuses, is not a stream, or has no
            video track.
        ConfigError: an argument out of range.
    """

    def __init__(self, url: str, *, size: tuple[int, int] | None = None, keep_full: bool = False,
                 transport: Literal["tcp", "udp"] = "tcp", options: dict[str, str] | None = None,
                 config: LiveConfig | None = None) -> None:
        if not isinstance(url, str) or not url.lower().startswith(LIVE_SCHEMES):
            raise ConfigError(f"a stream URL must start with one of {LIVE_SCHEMES}, got {url!r}")
        if transport not in TRANSPORTS:
            raise ConfigError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self._url = url
        self._options = dict(LOW_LATENCY_OPTIONS)
        if (config or LiveConfig()).pacing == "latest_frame":
            self._options.update(_LATEST_FRAME_OPTIONS)
        if url.lower().startswith(("rtsp://", "rtsps://")):
            self._options["rtsp_transport"] = transport
            if transport == "udp":
                self._options.update(_UDP_OPTIONS)
        self._options.update(options or {})
        super().__init__(redact(url), size=size, keep_full=keep_full, config=config)

    def _connect(self) -> av.container.InputContainer:
        cfg = self.config
        t0 = time.monotonic()
        try:
            container = av.open(self._url, options=self._options, timeout=(cfg.open_timeout_s, cfg.read_timeout_s))
        except (av.FFmpegError, OSError) as e:
            waited = time.monotonic() - t0
            if waited >= 0.9 * cfg.open_timeout_s:  # FFmpeg reports the interrupted open as some other error
                raise SourceError(
                    f"{self.uri}: no answer within {cfg.open_timeout_s:g} s ({self._scrub(e)})") from e
            raise SourceError(f"{self.uri}: cannot open the stream ({self._scrub(e)})") from e
        try:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise SourceError(f"{self.uri}: no video track (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            h, w = stream.codec_context.height, stream.codec_context.width
            if not (h and w):
                raise SourceError(f"{self.uri}: the video track has no frame size after probing")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            info = SourceInfo(uri=self.uri, width=w, height=h, fps=float(rate) if rate else None, frames=None,
                              codec=stream.codec_context.name, live=True)
        except BaseException:
            container.close()
            raise
        if not hasattr(self, "info"):  # the first connection describes the source
            self.info = info
        return container

    def _read(self, container: av.container.InputContainer) -> Iterator[_Raw]:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    self.corrupt_packets += 1
                    continue
                for vf in frames:
                    turns = round(vf.rotation / 90) % 4  # per frame: a reconnected camera may turn
                    rgb, full = av_frame_to_rgb(vf, self._size, self._keep_full, turns)
                    size = (vf.width, vf.height) if turns % 2 else (vf.height, vf.width)
                    yield _Raw(rgb, full, size, float(vf.time) if vf.time is not None else None)
                if self._stop.is_set():
                    return
        except (av.FFmpegError, OSError) as e:
            raise SourceError(f"{self.uri}: read error ({self._scrub(e)})") from e

    def _scrub(self, error: BaseException) -> str:
        """The error's text without the password: FFmpeg's messages quote the whole URL."""
        return str(error).replace(self._url, self.uri)

    def _disconnect(self, container: av.container.InputContainer) -> None:
        try:
            container.close()
        except (av.FFmpegError, OSError):
            pass  # closing a dead connection may fail; it is released either way


class CameraSource(LiveSource):
    """A camera through OpenCV: any ``cv2.VideoCapture`` argument (index ``0``, ``"/dev/video0"``, a URL or a file).

    A file given here is read like a camera: its end is a drop, so it is reopened and read again until the
    reconnection limit or the consumer stops. Times follow the capture's own timestamps
    (``CAP_PROP_POS_MSEC``) while they increase, else the arrival times. The open and read timeouts apply to
    backends that support them (FFmpeg and GStreamer); a V4L2 camera read blocks until a frame or an error.

    Args:
        device: a camera index, a device path, or anything else ``cv2.VideoCapture`` opens.
        size: (H, W) work size; frames are resized with ``cv2.INTER_AREA``.
        keep_full: also return the full-resolution frame in :attr:`Frame.full`.
        api: the OpenCV backend (``cv2.CAP_ANY``, ``cv2.CAP_V4L2``...).
        config: pacing, timeouts and reconnection.

    Raises:
        SourceError: the camera cannot be opened.
        ConfigError: an argument out of range.
    """

    def __init__(self, device: int | str, *, size: tuple[int, int] | None = None, keep_full: bool = False,
                 api: int = cv2.CAP_ANY, config: LiveConfig | None = None) -> None:
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            raise ConfigError(f"a camera is an index or a string for cv2.VideoCapture, got {device!r}")
        self._device, self._api = device, api
        super().__init__(redact(device) if isinstance(device, str) else f"camera:{device}", size=size,
                         keep_full=keep_full, config=config)

    def _connect(self) -> cv2.VideoCapture:
        cfg = self.config
        params: list[int] = []
        if isinstance(self._device, str):  # index cameras (V4L2) reject these parameters and fail to open
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(1000 * cfg.open_timeout_s),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(1000 * cfg.read_timeout_s)]
        cap = cv2.VideoCapture(self._device, self._api, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open camera {self.uri}")
        h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not hasattr(self, "info"):
            self.info = SourceInfo(uri=self.uri, width=w, height=h, fps=fps if fps > 0 else None, frames=None,
                                   codec=cap.getBackendName().lower(), live=True)
        return cap

    def _read(self, cap: cv2.VideoCapture) -> Iterator[_Raw]:
        while not self._stop.is_set():
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return  # end of data or a camera failure: a drop
            if bgr.ndim == 2:
                bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
            full = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            rgb = full
            if self._size is not None:
                rgb = cv2.resize(full, self._size[::-1], interpolation=cv2.INTER_AREA)  # cv2 takes (W, H)
            ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            # backends without timestamps report 0 or -1 for every frame: they fall back to arrival times
            yield _Raw(rgb, full if self._keep_full else None, full.shape[:2], ms / 1000.0 if ms >= 0 else None)

    def _disconnect(self, cap: cv2.VideoCapture) -> None:
        cap.release()


def open_live(source: int | str, *, size: tuple[int, int] | None = None, keep_full: bool = False,
              config: LiveConfig | None = None, **kwargs: Any) -> LiveSource:
    """Open a camera (an index or a ``/dev/`` path) or a network stream (a URL) with the live defaults.

    Args:
        source: a camera index, a ``/dev/video*`` path, or an ``rtsp://``, ``http(s)://``, ``tcp://`` URL.
        size, keep_full, config: as :class:`StreamSource` and :class:`CameraSource`.
        **kwargs: more arguments of the chosen class (``transport``, ``options``, ``api``).

    Raises:
        SourceError: as the chosen class. ConfigError: a source that is neither.
    """
    if isinstance(source, str) and source.lower().startswith(LIVE_SCHEMES):
        return StreamSource(source, size=size, keep_full=keep_full, config=config, **kwargs)
    if (isinstance(source, int) and not isinstance(source, bool)) or (
            isinstance(source, str) and source.startswith("/dev/")):
        return CameraSource(source, size=size, keep_full=keep_full, config=config, **kwargs)
    raise ConfigError(f"not a live source (a camera index, a /dev/ path or a stream URL): {source!r}")
