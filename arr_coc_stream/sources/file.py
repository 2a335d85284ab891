"""Video files through PyAV: :class:`VideoFileSource` (decoded on a background thread), :func:`av_frame_to_rgb`
(a decoded frame to resized, rotated RGB arrays; the network source uses it too) and :func:`probe_decode_fps`
(decode-only throughput, the benchmark's reference).

Examples:
    >>> with VideoFileSource("clip.mp4", size=(256, 256)) as src:  # doctest: +SKIP
    ...     for frame in src:
    ...         print(frame.index, frame.time, frame.rgb.shape)  # (256, 256, 3)
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Generator

import av
import numpy as np

from ..errors import ConfigError, SourceError
from .base import DEFAULT_FPS, Frame, SourceInfo, ThreadedSource, _check_size


class VideoFileSource(ThreadedSource):
    """Frames of a video file, decoded by PyAV (``thread_type="AUTO"``) on a background thread.

    The first frame is decoded on open: av 18 exposes the display rotation only on decoded frames
    (``VideoFrame.rotation``, counter-clockwise degrees from the DISPLAYMATRIX side data), and a file with no
    decodable frame fails here rather than mid-run. The rotation of the first frame, rounded to a multiple of 90
    degrees, applies to the whole stream; mirror flips in the display matrix are ignored. A packet the decoder
    rejects is skipped and counted in ``corrupt_packets``. A file that ends before the frame count its container
    declares, or whose data cannot be read past some point, is truncated or damaged: the frames before are
    delivered, then the source ends and :attr:`incomplete` names the last good frame. A still image (PNG,
    JPEG...) is refused: it is not a video (give ``[image]`` as an iterable of frames for one frame). Not
    thread-safe: iterate and close from one thread.

    Args:
        path: video file.
        size: (H, W) work size; PyAV returns frames already area-resized to it (libswscale, ``AREA``).
        keep_full: also return the full-resolution frame in :attr:`Frame.full`.
        threads: decode on a background thread; ``False`` decodes inline (simplest path, for debugging).
        queue_size: frames decoded ahead of the consumer at most.

    Raises:
        SourceError: missing or unreadable file, a still image, no video stream, no decodable frame.
        ConfigError: ``size`` or ``queue_size`` out of range.
    """

    thread_name = "arr_coc_stream-decode"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size: tuple[int, int] | None = None,
        keep_full: bool = False,
        threads: bool = True,
        queue_size: int = 8,
    ) -> None:
        self.path = os.fspath(path)
        self._size = _check_size(size)
        self._keep_full = keep_full
        self.corrupt_packets = 0
        self._read_error: str | None = None
        super().__init__(threads=threads, queue_size=queue_size)
        if not os.path.exists(self.path):
            raise SourceError(f"no such file: {self.path!r}")
        try:
            self._container = av.open(self.path, mode="r")
        except (av.FFmpegError, OSError) as e:
            raise SourceError(f"not a video file or unreadable: {self.path!r} ({e})") from e
        try:
            fmt = self._container.format.name
            if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg's single-image demuxers
                raise SourceError(
                    f"{self.path!r} is a still image ({fmt}), not a video; for one frame pass "
                    "[image] (an HxWx3 uint8 RGB array in a list) as the source"
                )
            if not self._container.streams.video:
                raise SourceError(f"no video stream in {self.path!r}")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            self._decoded = self._decode(stream)
            first = next(self._decoded, None)
            if first is None:
                raise SourceError(f"{self.path!r} contains no decodable frames")
            self._first = first
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
        self.info = SourceInfo(
            uri=self.path,
            width=w,
            height=h,
            fps=float(rate) if rate else None,
            frames=stream.frames or None,
            codec=stream.codec_context.name,
            live=False,
        )

    def _decode(self, stream: av.video.stream.VideoStream) -> Generator[av.VideoFrame, None, None]:
        """Yield decoded frames, skipping (and counting) packets the decoder rejects."""
        try:
            for packet in self._container.demux(stream):
                try:
                    yield from packet.decode()
                except av.FFmpegError:
                    self.corrupt_packets += 1
        except av.FFmpegError as e:  # the data ends or breaks here: the frames so far stand (see _produce)
            self._read_error = str(e)

    def _to_frame(self, vf: av.VideoFrame, index: int) -> Frame:
        rgb, full = av_frame_to_rgb(vf, self._size, self._keep_full, self._quarter_turns)
        if vf.pts is not None:
            assert self._time_base is not None  # a stream whose frames carry timestamps has a time base
            t = float((vf.pts - self._start_pts) * self._time_base)
        else:
            t = index / (self.info.fps or DEFAULT_FPS)
        return Frame(rgb=rgb, index=index, time=t, source_size=(self.info.height, self.info.width), full=full)

    def _produce(self) -> Generator[Frame, None, None]:
        n = 0
        for index, vf in enumerate(itertools.chain((self._first,), self._decoded)):
            yield self._to_frame(vf, index)
            n = index + 1
        declared = self.info.frames
        if self._read_error is not None or (declared is not None and n < declared):
            what = f"{n} of {declared} declared frames" if declared else f"{n} frames"
            skipped = f", {self.corrupt_packets} corrupt packet(s) skipped" if self.corrupt_packets else ""
            error = f"; read error: {self._read_error}" if self._read_error else ""
            self.incomplete = (
                f"{self.path!r} is truncated or damaged: it ends after frame {n - 1} ({what} decoded{skipped}{error})"
            )

    def _release(self) -> None:
        self._decoded.close()
        self._container.close()


def av_frame_to_rgb(
    vf: av.VideoFrame, size: tuple[int, int] | None, keep_full: bool, quarter_turns: int
) -> tuple[np.ndarray, np.ndarray | None]:
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
        assert full is not None  # converted above: no size
        return full, full if keep_full else None
    h, w = size if k % 2 == 0 else size[::-1]  # resize before rotating
    small = vf.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    return np.ascontiguousarray(np.rot90(small, k)), full


def probe_decode_fps(
    path: str | os.PathLike[str], size: tuple[int, int] | None = None, max_frames: int | None = None
) -> tuple[int, float]:
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
