"""Live sources on real streams over loopback (127.0.0.1 only): RTSP from GStreamer's server, cameras via OpenCV.

The RTSP server (``tests/rtsp_server.py``) runs under the system python with Debian's GStreamer packages
(``scripts/setup.sh`` installs them) and publishes a clip whose frames carry their clip index in the pixels: a
16-bit binary code of black and white blocks along the top, readable after H.264 and the resize to the work
resolution. The server appends ``n clip_index monotonic_time`` to a log for each frame it publishes, so the
newest published frame is known at any moment from the frame numbers themselves, and publish times give the
latency. Without those packages (or without Xvfb for the window test) the tests skip and say why, or fail when
``ARR_COC_REQUIRE_LIVE=1`` (``.ci/run`` sets it: CI must not go green with none of them run).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import arr_coc_stream as acs
from arr_coc_stream.errors import ConfigError, SourceError
from arr_coc_stream.sources import (
    CameraSource,
    Frame,
    LiveConfig,
    Source,
    SourceInfo,
    StreamSource,
    open_source,
)
from arr_coc_stream.sources.live import LiveSource, _Raw
from arr_coc_stream.sources.network import redact

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
H, W = 240, 320
FPS = Fraction(30000, 1001)  # fractional on purpose: 29.97 must stay 29.97
CLIP_FRAMES = 300  # the clip loops; frame numbers are compared modulo this (lags are far below half of it)
# A client may decode a frame before the server has logged it (the log line follows the push): frame numbers up
# to this many ahead of the newest logged one are read as ahead, not as a loop behind.
AHEAD = 30
GOP = 15  # a keyframe every half second: a (re)connecting client decodes within 0.5 s
CODE_ROWS, CODE_COLS, CODE_H = 2, 8, 40  # 16 code blocks of 40 x 40 px along the top
WORK = (256, 256)


# ---------------------------------------------------------------- numbered frames


def numbered_frame(c: int) -> np.ndarray:
    """Clip frame ``c``: the code of ``c`` on top, a colour gradient with a red square moving across below."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x * 255 // W, y * 255 // H, np.full_like(x, 96)], axis=-1).astype(np.uint8)
    px = (c * 4) % (W - 40)
    img[120:160, px : px + 40] = (230, 20, 20)
    bw = W // CODE_COLS
    for b in range(CODE_ROWS * CODE_COLS):
        r, col = divmod(b, CODE_COLS)
        img[r * CODE_H : (r + 1) * CODE_H, col * bw : (col + 1) * bw] = 255 if (c >> b) & 1 else 0
    return img


def read_number(rgb: np.ndarray) -> int:
    """Decode :func:`numbered_frame`'s code from an RGB frame at any size; raise when a block is not clear."""
    h, w = rgb.shape[:2]
    bh, bw = h * CODE_H / H, w / CODE_COLS
    n = 0
    for b in range(CODE_ROWS * CODE_COLS):
        r, col = divmod(b, CODE_COLS)
        y0, x0 = r * bh, col * bw
        block = rgb[int(y0 + bh / 4) : int(y0 + 3 * bh / 4), int(x0 + bw / 4) : int(x0 + 3 * bw / 4)]  # inner half
        m = float(block.mean())
        if 60 < m < 195:  # neither black nor white: a corrupt or concealed frame
            raise ValueError(f"code block {b} unreadable (mean {m:.0f})")
        n |= int(m > 127) << b
    return n


def test_numbered_frames_round_trip() -> None:
    for c in (0, 1, 5, 135, 299):
        assert read_number(numbered_frame(c)) == c
        assert read_number(cv2.resize(numbered_frame(c), WORK[::-1], interpolation=cv2.INTER_AREA)) == c


@dataclass(frozen=True)
class ClipFiles:
    h264: Path  # Annex-B access units, one per frame
    index: Path  # {"fps": "30000/1001", "frames": [[offset, size, key], ...]}


def require_live(reason: str) -> None:
    """Skip a live test whose dependency is missing, or fail it when ``ARR_COC_REQUIRE_LIVE=1`` (CI)."""
    if os.environ.get("ARR_COC_REQUIRE_LIVE") == "1":
        pytest.fail(f"ARR_COC_REQUIRE_LIVE=1 and a live-test dependency is missing: {reason}")
    pytest.skip(reason)


def test_missing_live_dependency_skips_here_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARR_COC_REQUIRE_LIVE", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no GStreamer"):
        require_live("no GStreamer")
    monkeypatch.setenv("ARR_COC_REQUIRE_LIVE", "1")  # what .ci/run sets
    with pytest.raises(pytest.fail.Exception, match="dependency is missing: no GStreamer"):
        require_live("no GStreamer")
    assert "ARR_COC_REQUIRE_LIVE=1" in (ROOT / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> ClipFiles:
    return encode_clip(tmp_path_factory.mktemp("rtsp_clip"))


def encode_clip(d: Path) -> ClipFiles:
    """Encode the numbered clip into ``d``: no B-frames, one slice per frame, SPS/PPS before every keyframe."""
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = W, H, "yuv420p"
    cc.time_base, cc.framerate = 1 / FPS, FPS
    # sliced threads would split each frame into slices; one slice per frame is what most cameras send
    cc.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "crf": "20",
        "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=0:repeat-headers=1:sliced-threads=0:threads=1",
    }
    frames: list[list[int]] = []
    data = bytearray()

    def add(packets: list[av.Packet]) -> None:
        for p in packets:
            b = bytes(p)
            frames.append([len(data), len(b), int(p.is_keyframe)])
            data.extend(b)

    for c in range(CLIP_FRAMES):
        vf = av.VideoFrame.from_ndarray(numbered_frame(c), format="rgb24")
        vf.pts = c
        add(cc.encode(vf))
    add(cc.encode(None))
    assert len(frames) == CLIP_FRAMES
    files = ClipFiles(d / "clip.h264", d / "clip.json")
    files.h264.write_bytes(bytes(data))
    files.index.write_text(json.dumps({"fps": str(FPS), "frames": frames}))
    return files


# ---------------------------------------------------------------- the RTSP server


def _gstreamer_missing() -> str | None:
    """Why the loopback RTSP server cannot run here, or None."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found (the RTSP server needs the system python with Debian's GStreamer)"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('appsrc', 'rtph264pay', 'rtpbin', 'alawenc', 'rtppcmapay', 'audiotestsrc')"
        " if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))"
    )
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {SYSTEM_PYTHON}: {e}"
    if out.returncode != 0:
        return (
            "GStreamer RTSP server bindings missing (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
            f"gstreamer1.0-plugins-base gstreamer1.0-plugins-good; scripts/setup.sh does it as root): "
            f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
        )
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()} (gstreamer1.0-plugins-base / -good)"
    return None


@pytest.fixture(scope="module")
def gstreamer() -> None:
    reason = _gstreamer_missing()
    if reason:
        require_live(reason)


class RtspServer:
    """``tests/rtsp_server.py`` as a subprocess; :meth:`stop` kills it, :meth:`start` again keeps port and epoch."""

    def __init__(self, clip: ClipFiles, folder: Path) -> None:
        self.clip, self.folder = clip, folder
        self.log = folder / "published.log"
        self.epoch = time.monotonic()  # frame n is due at epoch + n / FPS, across restarts
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        err = (self.folder / "server.err").open("a")
        self.proc = subprocess.Popen(
            [
                SYSTEM_PYTHON,
                str(SERVER),
                "--clip",
                str(self.clip.h264),
                "--index",
                str(self.clip.index),
                "--log",
                str(self.log),
                "--port",
                str(self.port),
                "--epoch",
                repr(self.epoch),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,  # stdin: dies with us
            env={**os.environ, "PYTHONPATH": ""},
        )
        err.close()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30.0)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r} {(self.folder / 'server.err').read_text()}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # a crash, not a goodbye: the client sees the connection die
            self.proc.wait(timeout=30)
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.stdout.close()  # type: ignore[union-attr]
            self.proc = None

    def url(self, mount: str = "/stream") -> str:
        return f"rtsp://127.0.0.1:{self.port}{mount}"

    def published(self) -> dict[int, float]:
        """Publish time (monotonic seconds) of every frame number published so far."""
        out = {}
        with self.log.open() as f:
            for line in f:
                if line.endswith("\n"):  # the last line may still be being written
                    n, _, t = line.split()
                    out[int(n)] = float(t)
        return out

    def newest(self) -> int:
        """The newest published frame number, from the last whole line of the log."""
        with self.log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 256))
            tail = f.read().decode()
        lines = tail.split("\n")[:-1]  # what follows the last newline is not a whole line yet
        return int(lines[-1].split()[0])


@pytest.fixture(scope="module")
def server(gstreamer: None, clip: ClipFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspServer]:
    srv = RtspServer(clip, tmp_path_factory.mktemp("rtsp_server"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def absolute(c: int, newest: int) -> int:
    """The frame number whose clip index is ``c``: at most :data:`AHEAD` after ``newest``, less than a loop before."""
    return newest + AHEAD - (newest + AHEAD - c) % CLIP_FRAMES


class Tap(Source):
    """Passes a source's frames through, noting each one's frame number and the newest published as it leaves."""

    def __init__(self, inner: Source, server: RtspServer) -> None:
        self.inner, self.server, self.info = inner, server, inner.info
        self.seen: dict[int, tuple[int, int]] = {}  # index -> (frame number, newest published at hand-off)

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.inner:
            newest = self.server.newest()
            self.seen[frame.index] = (absolute(read_number(frame.rgb), newest), newest)
            yield frame

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------- RTSP tests


@pytest.mark.slow
def test_rtsp_results_and_latency(server: RtspServer, tmp_path: Path) -> None:
    src = StreamSource(server.url(), size=WORK)
    assert src.info.live and src.info.codec == "h264" and (src.info.height, src.info.width) == (H, W)
    assert src.info.fps == pytest.approx(float(FPS), abs=1e-6)
    tap = Tap(src, server)
    latency: list[float] = []
    done_at: dict[int, float] = {}

    def on_result(r: acs.FrameResult) -> None:  # on the caller's thread, right after the result exists
        done_at[r.index] = time.monotonic()

    results = list(acs.stream(tap, "red", max_frames=30, jsonl=tmp_path / "live.jsonl", callbacks=[on_result]))
    published = server.published()
    for r in results[5:]:  # the first frames include the engine's warm-up
        latency.append(done_at[r.index] - published[tap.seen[r.index][0]])
    assert len(results) == 30 and all(r.relevance.shape == (32, 32) for r in results)
    numbers = [tap.seen[r.index][0] for r in results]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    # indices count frames: their steps match the steps of the frame numbers in the pixels
    assert np.diff([r.index for r in results]).tolist() == np.diff(numbers).tolist()
    assert [r.dropped for r in results[1:]] == (np.diff(numbers) - 1).tolist()
    assert results[0].reset and not any(r.gap for r in results)
    header, saved = acs.read_jsonl(tmp_path / "live.jsonl")
    assert header["source"]["live"] is True and [r.index for r in saved] == [r.index for r in results]
    ms = 1000 * np.array(latency)
    print(
        f"\nRTSP publish -> result latency over {len(ms)} frames: median {np.median(ms):.1f} ms, "
        f"p90 {np.percentile(ms, 90):.1f} ms, max {ms.max():.1f} ms "
        f"(engine {np.median([r.timings['total'] for r in results[5:]]):.1f} ms/frame)"
    )
    assert (ms > 0).all()


@pytest.mark.slow
def test_rtsp_udp_transport(server: RtspServer) -> None:
    with StreamSource(server.url(), size=WORK, transport="udp", config=LiveConfig(pacing="every_frame")) as src:
        numbers = []
        for frame in src:
            numbers.append(read_number(frame.rgb))
            if len(numbers) == 20:
                break
    assert np.all(np.diff(numbers) % CLIP_FRAMES == 1), numbers


@pytest.mark.slow
def test_latest_frame_drops_and_stays_current(server: RtspServer) -> None:
    src = StreamSource(server.url(), size=WORK)  # latest_frame is the default for live sources
    tap = Tap(src, server)

    def slow(r: acs.FrameResult) -> None:  # an engine slower than the stream: ~5 frames arrive per result
        time.sleep(0.15)

    results = list(acs.stream(tap, "red", max_frames=15, callbacks=[slow]))
    numbers = [tap.seen[r.index][0] for r in results]
    lags = [newest - n for n, newest in tap.seen.values()]
    assert max(lags) <= 2, lags  # each frame handed to the engine is at most 2 behind the newest published
    steps = np.diff(numbers)
    assert steps.min() >= 1 and np.median(steps) >= 4, numbers
    assert [r.dropped for r in results[1:]] == (steps - 1).tolist()  # every dropped frame is counted
    # the reader went on replacing frames until the source closed, after the last result
    assert src.dropped >= sum(r.dropped for r in results[1:]) > 0 and src.lost == 0


@pytest.mark.slow
def test_every_frame_drops_nothing(server: RtspServer) -> None:
    src = StreamSource(server.url(), size=WORK, config=LiveConfig(pacing="every_frame"))
    tap = Tap(src, server)

    def slow(r: acs.FrameResult) -> None:  # slower than the stream, yet nothing may be dropped
        time.sleep(0.04)

    results = list(acs.stream(tap, "red", max_frames=25, callbacks=[slow]))
    # steps of the clip index itself, modulo the loop: no frame number to reconstruct, so nothing to wrap
    clip_index = [tap.seen[r.index][0] % CLIP_FRAMES for r in results]
    assert (np.diff(clip_index) % CLIP_FRAMES).tolist() == [1] * 24, clip_index
    assert [r.index for r in results] == list(range(25))
    assert src.dropped == 0 and not any(r.dropped for r in results)


@pytest.mark.slow
def test_reconnect_after_server_restart(gstreamer: None, clip: ClipFiles, tmp_path: Path) -> None:
    srv = RtspServer(clip, tmp_path)
    restarter: threading.Thread | None = None
    try:
        srv.start()
        config = LiveConfig(reconnect_timeout_s=4.0, read_timeout_s=3.0)
        src = StreamSource(srv.url(), size=WORK, config=config)
        tap = Tap(src, srv)
        down_for = 1.5

        def outage() -> None:
            time.sleep(down_for)
            srv.start()  # same port, same epoch: frame numbers go on as a camera's would

        results: list[acs.FrameResult] = []

        def on_result(r: acs.FrameResult) -> None:
            nonlocal restarter
            if len(results) == 20 and restarter is None:  # mid-stream, the server dies and comes back
                srv.stop()
                restarter = threading.Thread(target=outage)
                restarter.start()

        after_gap = 0
        jsonl = tmp_path / "reconnect.jsonl"
        with pytest.raises(SourceError, match="not back within reconnect_timeout_s=4 s"):
            for r in acs.stream(tap, "red", jsonl=jsonl, callbacks=[on_result]):
                results.append(r)
                if any(x.gap for x in results):
                    after_gap += 1
                    if after_gap == 15:  # reconnected and running: now the server goes away for good
                        restarter.join()  # type: ignore[union-attr]
                        srv.stop()
        gaps = [r for r in results if r.gap > 0]
        assert len(gaps) == 1 and src.reconnects == 1
        g = gaps[0]
        assert g.reset and g.gap >= down_for
        before = results[results.index(g) - 1]
        n_before, n_after = tap.seen[before.index][0], tap.seen[g.index][0]
        # frames lost in the gap, estimated from the wall clock and the frame rate, against the frame numbers
        print(
            f"\nreconnected after a {g.gap:.2f} s gap: {g.dropped} frames estimated lost, "
            f"{n_after - n_before - 1} by the frame numbers"
        )
        assert abs(g.dropped - (n_after - n_before - 1)) <= 3, (g.dropped, n_before, n_after)
        assert g.index - before.index == g.dropped + 1
        _, saved = acs.read_jsonl(jsonl)  # every result reached the file, the gap included
        assert [r.index for r in saved] == [r.index for r in results]
        assert [r.gap for r in saved] == pytest.approx([round(r.gap, 6) for r in results])
        assert saved[results.index(g)].dropped == g.dropped and saved[results.index(g)].reset
    finally:
        if restarter is not None:
            restarter.join()
        srv.stop()


@pytest.mark.slow
def test_stream_without_video_track(server: RtspServer) -> None:
    with pytest.raises(SourceError, match="no video track"):
        StreamSource(server.url("/audio"))


# ---------------------------------------------------------------- HTTP and TCP streams


@pytest.fixture(scope="module")
def numbered_ts(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """12 numbered frames as an MPEG-TS stream (what HTTP and TCP cameras commonly send)."""
    path = tmp_path_factory.mktemp("ts") / "numbered.ts"
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "veryfast", "bf": "0"})
        stream.height, stream.width, stream.pix_fmt = H, W, "yuv420p"
        for c in range(12):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(numbered_frame(c), format="rgb24")))
        out.mux(stream.encode())
    return path.read_bytes()


@contextlib.contextmanager
def _serve(scheme: str, payload: bytes) -> Iterator[str]:
    """Serve ``payload`` on 127.0.0.1 to every client: an HTTP GET, or the bytes of a plain TCP connection."""
    if scheme == "http":

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        t = threading.Thread(target=httpd.serve_forever)
        t.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/numbered.ts"
        finally:
            httpd.shutdown()
            t.join()
            httpd.server_close()
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn = sock.accept()[0]
            except OSError:
                continue
            with conn:
                conn.sendall(payload)

    t = threading.Thread(target=serve)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        sock.close()


@pytest.mark.parametrize("scheme", ["http", "tcp"])
@pytest.mark.slow
def test_http_and_tcp_streams(numbered_ts: bytes, scheme: str) -> None:
    with _serve(scheme, numbered_ts) as url:
        config = LiveConfig(pacing="every_frame", backoff_s=0.05, open_timeout_s=5.0)
        with StreamSource(url, size=WORK, config=config) as src:
            assert src.info.codec == "h264" and src.info.fps == pytest.approx(float(FPS), abs=1e-3)
            frames = []
            for frame in src:
                frames.append(frame)
                if len(frames) == 16:
                    break
    numbers = [read_number(f.rgb) for f in frames]
    # the stream's end is a drop: the source reconnects and the served clip starts again, with a reported gap
    assert numbers == list(range(12)) + list(range(4)), numbers
    assert not any(f.reset for f in frames[:12]) and frames[12].reset and frames[12].gap > 0
    np.testing.assert_allclose([f.time for f in frames[:12]], np.arange(12) / float(FPS), atol=2e-3)
    assert src.reconnects >= 1


# ---------------------------------------------------------------- errors without a server


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never sends a byte."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.1)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        sock.close()


@pytest.mark.parametrize("scheme", ["rtsp", "http", "tcp"])
def test_url_that_never_answers_times_out(silent_port: int, scheme: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="no answer within 1 s"):
        StreamSource(f"{scheme}://127.0.0.1:{silent_port}/stream", config=LiveConfig(open_timeout_s=1.0))
    assert 0.9 <= time.monotonic() - t0 < 10


def test_refused_and_unopenable_sources() -> None:
    port = _free_port()
    with pytest.raises(SourceError, match="cannot open the stream"):
        open_source(f"rtsp://user:secret@127.0.0.1:{port}/x")
    with pytest.raises(SourceError) as e:
        open_source(f"rtsp://user:secret@127.0.0.1:{port}/x")
    assert "secret" not in str(e.value)  # passwords never reach messages
    with pytest.raises(SourceError, match="cannot open camera"):
        CameraSource(97)
    with pytest.raises(SourceError, match="cannot open camera"):
        open_source("/dev/video97")


def test_config_errors() -> None:
    for bad in (
        {"pacing": "fastest"},
        {"open_timeout_s": 0},
        {"backoff_s": 2.0, "backoff_max_s": 1.0},
        {"reconnect_timeout_s": 0},
        {"reconnect_timeout_s": -1.0},
        {"queue_size": 0},
    ):
        with pytest.raises(ConfigError):
            LiveConfig(**bad)
    with pytest.raises(ConfigError):
        StreamSource("rtsp://127.0.0.1:1/x", transport="sctp")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        StreamSource("file.mp4")
    assert redact("rtsp://admin:pw@10.0.0.9:554/s") == "rtsp://admin:***@10.0.0.9:554/s"


class _HangsUp(LiveSource):
    """A backend whose first connection brings 3 frames and every later one opens, then ends with none."""

    def __init__(self) -> None:
        self.opened = 0
        self.info = SourceInfo(uri="hangs-up", width=8, height=8, fps=30.0, frames=None, codec=None, live=True)
        super().__init__(
            "hangs-up",
            size=None,
            keep_full=False,
            config=LiveConfig(pacing="every_frame", backoff_s=0.01, reconnect_timeout_s=0.2),
        )

    def _connect(self) -> int:
        self.opened += 1
        return self.opened

    def _read(self, conn: int) -> Iterator[_Raw]:
        for _ in range(3 if conn == 1 else 0):
            yield _Raw(np.zeros((8, 8, 3), np.uint8), None, (8, 8), None)

    def _disconnect(self, conn: int) -> None:
        pass


def test_connections_without_frames_count_as_failed_attempts() -> None:
    src = _HangsUp()
    frames: list[Frame] = []
    # were an empty connection a recovery, the drop's clock would restart on each one and this would never end
    with pytest.raises(SourceError, match=r"not back within reconnect_timeout_s=0.2 s \(\d+ attempt"):
        for frame in src:
            frames.append(frame)
    assert len(frames) == 3 and src.opened >= 2 and src.reconnects == src.opened - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the camera source, driven by a file


def _write_mp4(path: Path, size: tuple[int, int], n: int) -> Path:
    """``n`` numbered frames at (H, W) ``size``, H.264 in MP4 at 29.97 fps."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "veryfast"})
        stream.height, stream.width, stream.pix_fmt = *size, "yuv420p"
        for c in range(n):
            img = cv2.resize(numbered_frame(c), size[::-1], interpolation=cv2.INTER_AREA)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def numbered_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_mp4(tmp_path_factory.mktemp("camera") / "numbered.mp4", (H, W), 30)


def test_camera_source_on_a_file(numbered_mp4: Path, tmp_path: Path) -> None:
    camera = tmp_path / "camera.mp4"
    shutil.copy(numbered_mp4, camera)
    src = CameraSource(str(camera), size=WORK, config=LiveConfig(pacing="every_frame", backoff_s=0.05))
    assert src.info.live and src.info.fps == pytest.approx(float(FPS), abs=1e-3)
    # the open capture keeps reading the old file; the reopen after its end finds a camera at another resolution
    _write_mp4(tmp_path / "smaller.mp4", (120, 176), 20).replace(camera)  # longer than the reader gets ahead
    numbers: dict[int, int] = {}

    class Numbers(Source):  # the pixels of each frame, keyed by index
        info = src.info

        def __iter__(self) -> Iterator[Frame]:
            for f in src:
                numbers[f.index] = read_number(f.rgb)
                yield f

        def close(self) -> None:
            src.close()

    results = acs.run(Numbers(), "red", max_frames=36)
    first = results[:30]
    assert [numbers[r.index] for r in first] == list(range(30)) and [r.index for r in first] == list(range(30))
    assert all(r.source_size == (H, W) for r in first) and not any(r.reset for r in first[1:])
    # times follow the file's timestamps through cv2 (CAP_PROP_POS_MSEC): 29.97 fps stays 29.97
    np.testing.assert_allclose([r.time for r in first], np.arange(30) / float(FPS), atol=2e-3)
    # the end of a camera's data is a drop, not the end: it is reopened, the next frame reports the gap and the
    # engine starts over (reconnect and a new resolution)
    again = results[30:]
    assert [numbers[r.index] for r in again] == list(range(6)) and src.reconnects == 1
    assert again[0].reset and again[0].gap > 0 and not any(r.reset for r in again[1:])
    assert all(r.source_size == (120, 176) for r in again)
    assert again[-1].boxes.max(axis=0)[2] <= 176 and again[-1].boxes.max(axis=0)[3] <= 120


# ---------------------------------------------------------------- the demos


def _headless_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


@pytest.mark.parametrize("name", ["rtsp_demo", "webcam_demo"])
def test_demo_help(name: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--max-frames" in out.stdout and "--query" in out.stdout


def _frames_in(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("name", ["rtsp_demo", "webcam_demo"])  # the webcam demo opens the URL through cv2
@pytest.mark.slow
def test_demo_headless_frame_limit(server: RtspServer, tmp_path: Path, name: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / f"{name}.py"),
            server.url(),
            "--max-frames",
            "8",
            "--jsonl",
            "out/live.jsonl",
        ],
        cwd=tmp_path,
        env=_headless_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no window" in proc.stdout and "done: frames 8 |" in proc.stdout
    assert "latency" in proc.stdout and "dropped" in proc.stdout and "tokens" in proc.stdout
    assert _frames_in(tmp_path / "out" / f"{name}_overlay.mp4") == 8
    assert len(acs.read_jsonl(tmp_path / "out" / "live.jsonl")[1]) == 8


@pytest.mark.parametrize("name", ["rtsp_demo", "webcam_demo"])
@pytest.mark.slow
def test_demo_headless_sigint(server: RtspServer, tmp_path: Path, name: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), server.url()],
        cwd=tmp_path,
        env=_headless_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until it processes frames
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("frames ") or not line:
                break
        assert lines[-1].startswith("frames "), "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert "interrupted" in text and "done: frames" in text
    assert _frames_in(tmp_path / "out" / f"{name}_overlay.mp4") >= 1  # the file was closed properly


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A virtual X display (Xvfb, Unix socket only), as a DISPLAY value."""
    if shutil.which("Xvfb") is None:
        require_live("Xvfb is not installed (apt-get install xvfb; scripts/setup.sh does it as root)")
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui is None or gui.group(1).upper() == "NONE":
        require_live("this OpenCV has no GUI (opencv-python-headless): the window path needs opencv-python")
    r, w = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(w), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30.0)
        number = os.read(r, 64).decode().strip() if ready else ""
        if not number:
            require_live("Xvfb did not start")
        yield f":{number}"
    finally:
        os.close(r)
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("name", ["rtsp_demo", "webcam_demo"])
@pytest.mark.slow
def test_demo_window_under_xvfb(server: RtspServer, xvfb: str, tmp_path: Path, name: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), server.url(), "--max-frames", "8"],
        cwd=tmp_path,
        env={**_headless_env(), "DISPLAY": xvfb},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "done: frames 8 |" in proc.stdout and "no window" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()  # the frames went to the window, not to a file
