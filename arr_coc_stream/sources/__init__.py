"""Video sources: where frames come from.

A :class:`Source` is a context manager and a one-pass iterator of :class:`Frame` objects described by a
:class:`SourceInfo`; ``SourceInfo.live`` tells live sources (an end of data is a drop) from files and arrays.
Every source but a user's own :class:`Source` produces on a background thread, behind the one hand-off.

Files:
    ``base.py``: :class:`Frame`, :class:`SourceInfo`, :class:`Source`, :class:`ThreadedSource` (starts, feeds,
        stops and joins the producer thread), :data:`DEFAULT_FPS`, :data:`LIVE_SCHEMES`.
    ``handoff.py``: :class:`Handoff`, producer thread to consumer: a bounded FIFO (``every_frame``) or a
        latest-frame slot (``latest_frame``).
    ``file.py``: :class:`VideoFileSource` (PyAV), :func:`av_frame_to_rgb`, :func:`probe_decode_fps`.
    ``iterable.py``: :class:`IterableSource`, any iterable of uint8 (H, W, 3) arrays or :class:`Frame`.
    ``live.py``: :class:`LiveConfig` and :class:`LiveSource`, the live base (reconnection, times, gaps).
    ``network.py``: :class:`StreamSource` (RTSP, HTTP, TCP through PyAV), :func:`redact`.
    ``camera.py``: :class:`CameraSource` (anything ``cv2.VideoCapture`` opens).
    This file: the names above, :func:`open_source` and :func:`open_live`, which pick a source for an argument.

The modules import one another only downwards (base and handoff at the bottom, this file at the top), never
this file, so none imports a module that imports it back.

Examples:
    >>> from arr_coc_stream.sources import open_source
    >>> with open_source("clip.mp4", size=(256, 256)) as src:  # doctest: +SKIP
    ...     for frame in src:
    ...         print(frame.index, frame.time, frame.rgb.shape)  # (256, 256, 3)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeGuard

# cv2 before av (file.py and network.py import av): the other order can hang cv2.imshow (DESIGN.md section 11).
# Importing any submodule runs this file first, so the order holds however the package is entered.
import cv2  # noqa: F401

from ..errors import ConfigError, SourceError
from .base import DEFAULT_FPS, LIVE_SCHEMES, Frame, Source, SourceInfo, ThreadedSource
from .camera import CameraSource
from .file import VideoFileSource, av_frame_to_rgb, probe_decode_fps
from .handoff import PACINGS, Handoff, Pacing
from .iterable import IterableSource
from .live import LiveConfig, LiveSource
from .network import LOW_LATENCY_OPTIONS, TRANSPORTS, StreamSource, redact

__all__ = [
    "DEFAULT_FPS",
    "LIVE_SCHEMES",
    "LOW_LATENCY_OPTIONS",
    "PACINGS",
    "TRANSPORTS",
    "CameraSource",
    "Frame",
    "Handoff",
    "IterableSource",
    "LiveConfig",
    "LiveSource",
    "Pacing",
    "Source",
    "SourceInfo",
    "StreamSource",
    "ThreadedSource",
    "VideoFileSource",
    "av_frame_to_rgb",
    "open_live",
    "open_source",
    "probe_decode_fps",
    "redact",
]


def _is_camera(source: Any) -> bool:
    """A camera index (an int, not a bool) or a device path."""
    return (isinstance(source, int) and not isinstance(source, bool)) or (
        isinstance(source, str) and source.startswith("/dev/")
    )


def _is_stream(source: Any) -> TypeGuard[str]:
    return isinstance(source, str) and source.lower().startswith(LIVE_SCHEMES)


def open_live(
    source: int | str,
    *,
    size: tuple[int, int] | None = None,
    keep_full: bool = False,
    config: LiveConfig | None = None,
    **kwargs: Any,
) -> LiveSource:
    """Open a camera (an index or a ``/dev/`` path) or a network stream (a URL) with the live defaults.

    Args:
        source: a camera index, a ``/dev/video*`` path, or an ``rtsp://``, ``http(s)://``, ``tcp://`` URL.
        size, keep_full, config: as :class:`StreamSource` and :class:`CameraSource`.
        **kwargs: more arguments of the chosen class (``transport``, ``options``, ``api``).

    Raises:
        SourceError: as the chosen class. ConfigError: a source that is neither.
    """
    if _is_stream(source):
        return StreamSource(source, size=size, keep_full=keep_full, config=config, **kwargs)
    if _is_camera(source):
        return CameraSource(source, size=size, keep_full=keep_full, config=config, **kwargs)
    raise ConfigError(f"not a live source (a camera index, a /dev/ path or a stream URL): {source!r}")


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
    :func:`open_live`'s defaults (``latest_frame`` pacing, reconnection); build a :class:`StreamSource` or
    :class:`CameraSource` for other settings.

    Raises:
        SourceError: a file or stream that cannot be opened, or a type that is not a source.
    """
    if isinstance(source, Source):
        return source
    if _is_camera(source) or _is_stream(source):
        return open_live(source, size=size, keep_full=keep_full)
    if isinstance(source, (str, os.PathLike)):
        return VideoFileSource(source, size=size, keep_full=keep_full)
    if isinstance(source, Iterable) and not isinstance(source, (bytes, bytearray)):
        return IterableSource(source, size=size, keep_full=keep_full)
    raise SourceError(f"cannot open a source from a {type(source).__name__}: pass a path or an iterable of frames")
