"""Cameras through OpenCV: :class:`CameraSource` reads anything ``cv2.VideoCapture`` opens (an index, a
``/dev/video*`` path, a URL, or a file read the way a camera is).

Examples:
    >>> from arr_coc_stream.sources import CameraSource, LiveConfig
    >>> with CameraSource(0, size=(256, 256), config=LiveConfig(pacing="latest_frame")) as cam:  # doctest: +SKIP
    ...     frame = next(iter(cam))  # the newest frame: rgb (256, 256, 3) uint8
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2

from ..errors import ConfigError, SourceError
from .base import SourceInfo
from .live import LiveConfig, LiveSource, _Raw
from .network import redact


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

    def __init__(
        self,
        device: int | str,
        *,
        size: tuple[int, int] | None = None,
        keep_full: bool = False,
        api: int = cv2.CAP_ANY,
        config: LiveConfig | None = None,
    ) -> None:
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            raise ConfigError(f"a camera is an index or a string for cv2.VideoCapture, got {device!r}")
        self._device, self._api = device, api
        super().__init__(
            redact(device) if isinstance(device, str) else f"camera:{device}",
            size=size,
            keep_full=keep_full,
            config=config,
        )

    def _connect(self) -> cv2.VideoCapture:
        cfg = self.config
        params: list[int] = []
        if isinstance(self._device, str):  # index cameras (V4L2) reject these parameters and fail to open
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(1000 * cfg.open_timeout_s),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(1000 * cfg.read_timeout_s),
            ]
        cap = cv2.VideoCapture(self._device, self._api, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open camera {self.uri}")
        h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not hasattr(self, "info"):
            self.info = SourceInfo(
                uri=self.uri,
                width=w,
                height=h,
                fps=fps if fps > 0 else None,
                frames=None,
                codec=cap.getBackendName().lower(),
                live=True,
            )
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
