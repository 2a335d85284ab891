"""Network streams through PyAV: :class:`StreamSource` for ``rtsp://`` (``rtsps://``), ``http(s)://`` and
``tcp://`` URLs, its low-latency FFmpeg options, and :func:`redact` (a URL without its password).

Examples:
    >>> from arr_coc_stream.sources import LiveConfig, StreamSource
    >>> src = StreamSource("rtsp://127.0.0.1:8554/stream", size=(256, 256), transport="udp",  # doctest: +SKIP
    ...                    config=LiveConfig(pacing="every_frame"))
    >>> redact("rtsp://admin:pw@10.0.0.9:554/s")
    'rtsp://admin:***@10.0.0.9:554/s'
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import av

from ..errors import ConfigError, SourceError
from .base import LIVE_SCHEMES, SourceInfo
from .file import av_frame_to_rgb
from .live import LiveConfig, LiveSource, _Raw

TRANSPORTS: tuple[str, ...] = ("tcp", "udp")

# Low-latency demuxing: a short probe (half a second of a live stream is enough to find its codec parameters) and
# the decoder's low-delay mode.
LOW_LATENCY_OPTIONS = {"flags": "low_delay", "probesize": "500000", "analyzeduration": "500000"}
# latest_frame pacing also discards the packets read while probing: decoded, they would be its first frames, half
# a second old. The price: the first frame waits for the stream's next keyframe. every_frame keeps them (it drops
# nothing, and a stream shorter than the probe would otherwise decode nothing).
_LATEST_FRAME_OPTIONS = {"fflags": "nobuffer"}
# UDP delivers out of order; a 100 ms reorder buffer instead of FFmpeg's default 500 ms keeps latency low.
_UDP_OPTIONS = {"max_delay": "100000"}
# A reconnection already knows the frame rate: a 0.1 s probe finds the frame size (the full probe is the fallback
# when it does not), and its packets are kept, at most 0.1 s old, instead of waiting for the next keyframe. On the
# loopback server the first frame after a 3 s outage came 4.7 s after the kill with the full probe and the wait,
# 3.6-4.1 s with this (scripts/rtsp_outages.py).
_RECONNECT_OPTIONS = {"analyzeduration": "100000"}


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
    one, after the stream's next keyframe; a reconnection probes 0.1 s and keeps those packets instead, so a
    stream that is back delivers at once), and the decoder uses slice threads only (frame threads would delay
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

    def __init__(
        self,
        url: str,
        *,
        size: tuple[int, int] | None = None,
        keep_full: bool = False,
        transport: Literal["tcp", "udp"] = "tcp",
        options: dict[str, str] | None = None,
        config: LiveConfig | None = None,
    ) -> None:
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
        self._quick_options = {k: v for k, v in self._options.items() if (k, v) not in _LATEST_FRAME_OPTIONS.items()}
        self._quick_options.update({**_RECONNECT_OPTIONS, **(options or {})})
        super().__init__(redact(url), size=size, keep_full=keep_full, config=config)

    def _connect(self) -> av.container.InputContainer:
        container = self._open(self._quick_options) if hasattr(self, "info") else None  # hasattr: a reconnection
        if container is None:
            container = self._open(self._options)
        if container is None:
            raise SourceError(f"{self.uri}: the video track has no frame size after probing")
        return container

    def _open(self, options: dict[str, str]) -> av.container.InputContainer | None:
        """Open and probe with ``options``; None when the probe found no frame size (the container closed)."""
        cfg = self.config
        t0 = time.monotonic()
        try:
            container = av.open(self._url, options=options, timeout=(cfg.open_timeout_s, cfg.read_timeout_s))
        except (av.FFmpegError, OSError) as e:
            waited = time.monotonic() - t0
            if waited >= 0.9 * cfg.open_timeout_s:  # FFmpeg reports the interrupted open as some other error
                raise SourceError(f"{self.uri}: no answer within {cfg.open_timeout_s:g} s ({self._scrub(e)})") from e
            raise SourceError(f"{self.uri}: cannot open the stream ({self._scrub(e)})") from e
        try:
            if not container.streams.video:
                kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
                raise SourceError(f"{self.uri}: no video track (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            h, w = stream.codec_context.height, stream.codec_context.width
            if not (h and w):
                container.close()
                return None
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            info = SourceInfo(
                uri=self.uri,
                width=w,
                height=h,
                fps=float(rate) if rate else None,
                frames=None,
                codec=stream.codec_context.name,
                live=True,
            )
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
