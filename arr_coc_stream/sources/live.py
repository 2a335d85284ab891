"""The base of the live sources: :class:`LiveConfig` and :class:`LiveSource` (the reader thread, reconnection
with backoff, times, indices and gap accounting). Its backends: network streams (RTSP, HTTP, TCP) through PyAV
in :mod:`~arr_coc_stream.sources.network`, cameras through OpenCV in :mod:`~arr_coc_stream.sources.camera`.

A live source is a :class:`~arr_coc_stream.sources.base.Source` like a file: a context manager and a one-pass
iterator of :class:`~arr_coc_stream.sources.base.Frame`. A reader thread owns the connection; it reads, hands
frames to the consumer through the :class:`~arr_coc_stream.sources.handoff.Handoff` of the source's pacing, and
reconnects when the stream drops.

Pacing (:attr:`LiveConfig.pacing`):
    ``latest_frame`` (the default): the reader keeps only the newest frame, so a consumer slower than the stream
        always gets the most recent frame and never falls behind. The frames it replaced are counted in
        :attr:`Frame.dropped` of the frame delivered next and in :attr:`LiveSource.dropped`.
    ``every_frame``: a bounded queue; the reader waits for the consumer, so nothing is dropped (the network or
        the camera driver buffers, and a slow consumer drifts behind real time).

Drops: an end of data, a read error or a read timeout is a drop, not the end of the stream. The reader closes the
connection and reconnects after ``backoff_s``, doubling the wait up to ``backoff_max_s`` (0.25 s: a camera back
after an outage is found within a quarter of a second), and gives up with a
:class:`~arr_coc_stream.errors.SourceError` when ``reconnect_timeout_s`` have passed since the drop without a frame
(a connection that opens but brings no frame does not count as back). The first frame after a reconnect has
``reset=True`` (the engine starts its temporal state over), ``gap`` = seconds since the last frame before the drop,
and ``dropped`` includes the frames lost in the gap (estimated from the frame rate); when ``latest_frame`` pacing
replaces that frame, the frame delivered next carries all three. A reconnection's first frames arrive in a burst
(the server's and the probe's backlog): the gap is measured to when the first of them was live, not to when the
backlog was flushed (:meth:`LiveSource._arrivals`), so the frames counted lost match the frames the stream lost. No
frame is ever made up for a gap: black or repeated frames would look like scene cuts. The first open is not
retried: an address that never answers fails after ``open_timeout_s``.

Times: seconds since the first frame. Within one connection they follow the stream's timestamps (fractional
rates stay exact); across a reconnect, whose timestamps restart, they follow the wall clock. Frame indices count
every frame read plus the frames estimated lost in gaps, so ``index`` jumps by ``dropped + 1``.

Examples:
    >>> import arr_coc_stream
    >>> from arr_coc_stream.sources import StreamSource
    >>> src = StreamSource("rtsp://127.0.0.1:8554/stream", size=(256, 256))  # doctest: +SKIP
    >>> for r in arr_coc_stream.stream(src, query="red", max_frames=100):  # doctest: +SKIP
    ...     print(r.index, r.dropped, r.gap)
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, SourceError
from .base import Frame, SourceInfo, ThreadedSource, _check_size
from .handoff import PACINGS, Pacing


@dataclass(frozen=True)
class LiveConfig:
    """How a live source paces, times out and reconnects.

    Attributes:
        pacing: ``"latest_frame"`` (keep only the newest frame) or ``"every_frame"`` (drop nothing).
        open_timeout_s: seconds an open (connect, handshake, stream probe) may take.
        read_timeout_s: seconds a read may wait for data before the stream counts as dropped.
        reconnect_timeout_s: seconds after a drop to keep trying to reconnect before giving up; None retries
            forever. Time, not a count of attempts: an attempt against a dead address may take ``open_timeout_s``
            or fail at once.
        backoff_s: wait before the first reconnection attempt; doubles after each failure.
        backoff_max_s: the longest wait between attempts; it bounds how long a stream that is back stays unseen.
        queue_size: frames buffered ahead of the consumer in ``every_frame`` pacing.
    """

    pacing: Pacing = "latest_frame"
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_timeout_s: float | None = 60.0
    backoff_s: float = 0.1
    backoff_max_s: float = 0.25  # was 8 s: a 3 s outage became an 8.9 s gap (issue 13)
    queue_size: int = 8

    def __post_init__(self) -> None:
        if self.pacing not in PACINGS:
            raise ConfigError(f"pacing must be one of {PACINGS}, got {self.pacing!r}")
        for name in ("open_timeout_s", "read_timeout_s", "backoff_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.backoff_max_s < self.backoff_s:
            raise ConfigError(f"backoff_max_s ({self.backoff_max_s}) is below backoff_s ({self.backoff_s})")
        if self.reconnect_timeout_s is not None and not self.reconnect_timeout_s > 0:
            raise ConfigError(f"reconnect_timeout_s must be positive or None, got {self.reconnect_timeout_s!r}")
        if self.queue_size < 1:
            raise ConfigError(f"queue_size must be at least 1, got {self.queue_size}")


@dataclass
class _Raw:
    """A frame as a backend reads it, before the source gives it an index, a time and drop accounting."""

    rgb: np.ndarray  # [h, w, 3] uint8 at the work size (full size without one)
    full: np.ndarray | None  # [H, W, 3] uint8 when keep_full
    source_size: tuple[int, int]  # (H, W) of this frame, after rotation
    stamp: float | None  # the stream's own timestamp in seconds, None when it has none


class LiveSource(ThreadedSource):
    """Base of the live sources: the reader thread, pacing, reconnection, times, indices and gap accounting.

    A subclass opens a connection (:meth:`_connect`, raising :class:`SourceError`), reads it (:meth:`_read`,
    ending at a drop) and closes it (:meth:`_disconnect`). The first connection is opened by the constructor,
    so a bad address fails at once; reading starts on iteration, on a thread named ``arr_coc_stream-live``
    (:class:`~arr_coc_stream.sources.base.ThreadedSource`). Not thread-safe: iterate and close from one thread.
    ``close()`` waits for the reader, at most about ``max(open_timeout_s, read_timeout_s)``.

    Attributes:
        lost: frames estimated lost in gaps (drops and reconnects).
        reconnects: successful reconnections.
        corrupt_packets: packets the decoder rejected (skipped).
    """

    info: SourceInfo
    thread_name = "arr_coc_stream-live"

    def __init__(self, uri: str, *, size: tuple[int, int] | None, keep_full: bool, config: LiveConfig | None) -> None:
        self.uri = uri
        self.config = config or LiveConfig()
        self._size = _check_size(size)
        self._keep_full = keep_full
        self.lost = self.reconnects = self.corrupt_packets = 0
        super().__init__(pacing=self.config.pacing, queue_size=self.config.queue_size)
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

    @property
    def dropped(self) -> int:
        """Frames replaced before the consumer took them (``latest_frame`` pacing), in all."""
        return self._handoff.replaced

    def _produce(self) -> Generator[Frame, None, None]:
        """The reader (worker thread): read, reconnect after a drop, give each frame its index, time and gap."""
        conn, self._conn = self._conn, None
        failures = 0  # reconnection attempts since the drop (none of them brought a frame)
        dropped_at = 0.0  # monotonic time of the drop the reconnection attempts try to recover from
        try:
            while conn is not None:
                frames = 0
                try:
                    for raw, received, live in self._arrivals(self._read(conn), settle=self._reconnected):
                        if self._stop.is_set():
                            return
                        frames += 1
                        yield self._to_frame(raw, received, live)
                except SourceError:
                    pass  # a read error is a drop like the end of data: reconnect below
                finally:  # also when the consumer stops the reader at the yield above
                    self._disconnect(conn)
                    conn = None
                if self._stop.is_set():
                    return
                # a connection that opens but never delivers a frame is no recovery: the clock of the drop runs
                # on and the backoff keeps growing, so a server that accepts and hangs up cannot hold the source
                if frames or not failures:
                    dropped_at, failures = time.monotonic(), 0
                conn, failures = self._reconnect(dropped_at, failures)
        finally:
            if conn is not None:
                self._disconnect(conn)

    def _reconnect(self, dropped_at: float, failures: int) -> tuple[Any, int]:
        """Reopen with exponential backoff after ``failures`` failed attempts since the drop at ``dropped_at``.

        Returns:
            (connection, failures so far, this attempt included); the connection is None when stopped.

        Raises:
            SourceError: ``reconnect_timeout_s`` passed since the drop.
        """
        cfg, last = self.config, None
        while True:
            wait = min(cfg.backoff_s * 2 ** min(failures, 30), cfg.backoff_max_s)
            if cfg.reconnect_timeout_s is not None:
                left = dropped_at + cfg.reconnect_timeout_s - time.monotonic()
                if left <= 0:
                    break
                wait = min(wait, left)
            if self._stop.wait(wait):
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
        raise SourceError(
            f"{self.uri}: stream dropped and not back within reconnect_timeout_s="
            f"{cfg.reconnect_timeout_s:g} s ({failures} attempt(s) failed or brought no frame)"
            + (f"; last error: {last}" if last else "")
        )

    def _arrivals(self, raws: Iterator[_Raw], settle: bool) -> Iterator[tuple[_Raw, float, float]]:
        """(frame, monotonic arrival, monotonic time it was live) for each frame read from one connection.

        After a reconnect (``settle``) the first frames come in a burst: the server's and the probe's backlog,
        flushed at once. Those are held until a frame arrives at the stream's own pace (at least half a frame
        interval after the one before; at most a second of frames is held), then the first one's live time is
        its arrival moved back by the stream time the burst spans, so the gap and the frames lost in it are
        measured from when the frames were live, not from when the backlog was flushed. Without a frame rate the
        arrival is taken as is.
        """
        fps = self.info.fps
        held: list[tuple[_Raw, float]] | None = [] if settle and fps else None
        for raw in raws:
            now = time.monotonic()
            if held is None:
                yield raw, now, now
                continue
            if held and (now - held[-1][1] >= 0.5 / fps or len(held) >= fps):  # type: ignore[operator]
                yield from self._settled(held, fps)  # type: ignore[arg-type]
                held = None
                yield raw, now, now
            else:
                held.append((raw, now))
        if held:
            yield from self._settled(held, fps)  # type: ignore[arg-type]

    def _settled(self, held: list[tuple[_Raw, float]], fps: float) -> Iterator[tuple[_Raw, float, float]]:
        """The held burst, its first frame back-dated by the frames after it at the stream's rate (the stamps of a
        fresh connection's first frames cannot be trusted: FFmpeg's RTSP client gives them before its first
        RTCP report, nearly equal), to no earlier than a frame interval after the last frame before the drop (a
        source faster than real time, a file read as a camera, bursts without a backlog)."""
        (first, t0), (_, t1) = held[0], held[-1]
        floor = self._last[1] + 1.0 / fps if self._last is not None else t0
        yield first, t0, min(t0, max(t1 - (len(held) - 1) / fps, floor))
        for raw, t in held[1:]:
            yield raw, t, t

    def _to_frame(self, raw: _Raw, received: float, live: float) -> Frame:
        """Give a read frame its index, time and gap accounting (reader thread): ``received`` when it arrived,
        ``live`` when it was live (earlier for a frame of a backlog, see :meth:`_arrivals`)."""
        now = live
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
        return Frame(
            rgb=raw.rgb,
            index=index,
            time=t,
            source_size=raw.source_size,
            full=raw.full,
            reset=reset,
            gap=gap,
            dropped=lost,
            received=received,
        )

    def _release(self) -> None:
        if self._conn is not None:  # never iterated: the constructor's connection is still here
            self._disconnect(self._conn)
            self._conn = None
