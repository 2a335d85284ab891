"""The microscope (``arr-coc-stream serve``): the page in a real headless browser, and its HTTP contract.

The clip is generated: a red disc moving in the top half and a blue one in the bottom half of a photograph
(``synth.two_objects`` over ``chelsea``), so a query moves the selection from one half to the other, checked
against the discs' own masks. The browser test runs the real command line in a subprocess on a free loopback
port and drives the page with Playwright and the system's Chromium (``/usr/lib/chromium/chromium``; never a
downloaded browser). Without Playwright or Chromium it skips with the reason, or fails when
``ARR_COC_REQUIRE_LIVE=1`` (CI), as the live tests do. The HTTP tests run a :class:`Microscope` in this process
under Starlette's TestClient.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from conftest import ROOT
from starlette.testclient import TestClient
from test_live import RtspServer, encode_clip, gstreamer, require_live  # noqa: F401 (gstreamer: a fixture used by name)

from arr_coc_stream import synth
from arr_coc_stream.channels import CHANNELS
from arr_coc_stream.serve import MAX_QUERY_CHARS, Microscope, ServeConfig, make_app

CHROMIUM = Path("/usr/lib/chromium/chromium")  # the binary itself: /usr/bin/chromium is a shell wrapper
CELL = 8  # 256 px frames on the default 32 x 32 grid
K = 24  # few cells: the selection sits on the queried disc, so its centre says which one


@pytest.fixture(scope="module")
def discs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.Clip, synth.Clip]:
    """(the clip's file, the red disc's clip, the blue disc's clip): 40 frames, 1.6 s at 25 fps."""
    red, blue = synth.two_objects(("red", "blue"), n_frames=40, photo="chelsea")
    return synth.write_clip(red, tmp_path_factory.mktemp("serve") / "discs.mp4"), red, blue


def _until(what: str, check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def _on_disc(clip: synth.Clip, index: int, cell: list[int]) -> bool:
    """The grid cell (y, x) of frame ``index`` is on ``clip``'s disc or touches it (one cell of slack)."""
    y, x = cell
    return bool(
        clip.masks[index][max(0, CELL * (y - 1)) : CELL * (y + 2), max(0, CELL * (x - 1)) : CELL * (x + 2)].any()
    )


# ------------------------------------------------------------------------------------ HTTP, in this process
@pytest.fixture(scope="module")
def app(discs: tuple[Path, synth.Clip, synth.Clip]) -> Iterator[tuple[Microscope, TestClient]]:
    """A microscope over the clip played once (no loop), under TestClient; stopped at the end of the module."""
    microscope = Microscope(str(discs[0]), "blue", ServeConfig(), k=K)
    microscope.start()
    try:
        with TestClient(make_app(microscope)) as client:
            yield microscope, client
    finally:
        microscope.stop()


def _index(client: TestClient) -> int:
    frame = client.get("/api/status").json().get("frame")
    return -1 if frame is None else frame["index"]


def test_no_route_takes_a_path(app: tuple[Microscope, TestClient]) -> None:
    microscope, client = app
    paths = sorted(route.path for route in make_app(microscope).routes)
    assert paths == ["/", "/api/channel", "/api/query", "/api/status", "/frame.jpg", "/stream.mjpg"]
    assert not any("{" in p for p in paths)  # no path parameter anywhere
    for probe in ("/../../etc/passwd", "/data/microscope.html", "/arr_coc_stream/serve.py", "/frame.jpg/../x"):
        assert client.get(probe).status_code == 404, probe
    assert b"root:" not in client.get("/api/status?path=/etc/passwd").content
    assert ServeConfig().host == "127.0.0.1"  # this machine only unless --host


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "must be JSON"),
        (b"[]", 422, "JSON object"),
        (b"{}", 422, '"query" field'),
        (json.dumps({"query": 5}).encode(), 422, "string or null, got int"),
        (json.dumps({"query": ["red"]}).encode(), 422, "got list"),
        (json.dumps({"query": "r" * (MAX_QUERY_CHARS + 1)}).encode(), 422, f"at most {MAX_QUERY_CHARS}"),
        (json.dumps({"query": "red " * 2000}).encode(), 413, "over 4096 bytes"),
    ],
)
def test_a_bad_query_is_a_4xx_with_a_message_and_the_stream_goes_on(
    app: tuple[Microscope, TestClient], body: bytes, status: int, says: str
) -> None:
    microscope, client = app
    before = _until("a frame", lambda: _index(client) + 1) - 1
    response = client.post("/api/query", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status and says in response.json()["error"], response.text
    assert microscope.status()["query"]["text"] == "blue"  # the query in use is kept
    assert microscope.status()["state"] in ("running", "ended")  # never an error state
    if microscope.status()["state"] == "running":
        _until("the next frame", lambda: _index(client) > before)


def test_the_heads_warning_and_an_empty_query_reach_the_page(app: tuple[Microscope, TestClient]) -> None:
    microscope, client = app
    try:
        warned = client.post("/api/query", json={"query": "where is the dog"}).json()
        assert warned["applied"] and warned["ignored"] == ["dog"] and "query_encoder='clip'" in warned["message"]
        assert microscope.status()["query"]["warnings"] == warned["warnings"]  # what the page polls
        free = client.post("/api/query", json={"query": "  "}).json()
        assert free["applied"] and free["text"] is None and not free["warnings"]  # empty: query-free, no warning
    finally:
        assert client.post("/api/query", json={"query": "blue"}).json()["terms"] == ["blue"]


def test_the_channel_picker_checks_names(app: tuple[Microscope, TestClient]) -> None:
    microscope, client = app
    assert client.get("/api/status").json()["channels"] == list(CHANNELS)  # the registry's names, in its order
    assert client.post("/api/channel", json={"channel": "nope"}).status_code == 422
    assert client.post("/api/channel", json={"channel": 3}).status_code == 422
    assert client.post("/api/channel", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    assert microscope.status()["channel"] is None


def test_a_file_ends_cleanly_and_says_so(app: tuple[Microscope, TestClient]) -> None:
    microscope, client = app
    status = _until("the end of the file", lambda: (s := client.get("/api/status").json())["state"] == "ended" and s)
    assert "the source ended after 40 frames" in status["message"], status["message"]
    assert [row[0] for row in status["timeline"]["rows"]] == list(range(40))  # every frame, in order
    # after the end a picked channel still redraws the last frame
    seq = microscope.frame()[0]
    assert client.post("/api/channel", json={"channel": "pos_x"}).json() == {"channel": "pos_x"}
    _until("the redrawn frame", lambda: microscope.frame()[0] > seq)
    image = cv2.imdecode(np.frombuffer(client.get("/frame.jpg").content, np.uint8), cv2.IMREAD_GRAYSCALE)
    columns = image[image.shape[0] // 4 :].mean(axis=0)  # below the label; pos_x grows left to right
    assert columns[-40:].mean() > columns[:40].mean() + 100
    microscope.stop()
    assert microscope.stopped
    assert not [t.name for t in threading.enumerate() if t.name.startswith("arr_coc_stream-")]


@pytest.mark.usefixtures("gstreamer")  # skips, or fails under ARR_COC_REQUIRE_LIVE=1, without GStreamer
def test_an_rtsp_stream_and_a_stop_during_its_outage(tmp_path: Path) -> None:
    rtsp = RtspServer(encode_clip(tmp_path), tmp_path)  # the live tests' loopback RTSP server (GStreamer)
    rtsp.start()
    try:
        microscope = Microscope(rtsp.url(), None, ServeConfig(), k=K)
        microscope.start()
        with TestClient(make_app(microscope)) as client:
            status = _until(
                "frames from the stream",
                lambda: (s := client.get("/api/status").json()).get("frame", {}).get("index", -1) > 5 and s,
            )
            assert status["source"]["live"] and status["state"] == "running"
            assert client.get("/frame.jpg").headers["content-type"] == "image/jpeg"
            rtsp.stop()  # an outage: the engine thread now waits for the stream to come back
            time.sleep(0.5)
            start = time.monotonic()
            microscope.stop()
        assert microscope.stopped and time.monotonic() - start < 5
    finally:
        rtsp.stop()


# --------------------------------------------------------------------------- the command line, in a browser
@pytest.fixture(scope="module")
def server(discs: tuple[Path, synth.Clip, synth.Clip]) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``arr-coc-stream serve`` on a free loopback port, looping the clip, first query "blue": (url, process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "arr_coc_stream.cli", "serve", str(discs[0]), "--port", "0", "--loop"]
        + ["--query", "blue", "--k", str(K)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
                if line.startswith("arr-coc-stream serve: http://"):
                    url = line.split()[2]
        assert url is not None, f"the server did not start (exit {proc.poll()})"
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _chromium() -> Any:
    """Playwright's ``sync_playwright``, once the system Chromium is known to be there (else skip or fail)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_live("Playwright is not installed (pip install 'playwright>=1.40'; it drives the system Chromium)")
    if not CHROMIUM.is_file():
        require_live(f"no system Chromium at {CHROMIUM} (apt-get install chromium; scripts/setup.sh does it as root)")
    return sync_playwright


def _image(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)


def test_the_page_in_a_real_browser(
    server: tuple[str, subprocess.Popen[str]], discs: tuple[Path, synth.Clip, synth.Clip], tmp_path: Path
) -> None:
    sync_playwright = _chromium()
    url, _ = server
    _, red, blue = discs
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        assert page.title() == "arr-coc-stream microscope"

        # frames arrive and change
        page.wait_for_function("document.getElementById('view').naturalWidth > 0", timeout=20_000)
        view = page.locator("#view")
        first = _image(view.screenshot())
        _until("a new frame on the page", lambda: np.abs(_image(view.screenshot()) - first).mean() > 1.0)

        def selection() -> dict[str, Any]:
            data = page.eval_on_selector("#selection", "e => ({...e.dataset})")
            return {k: json.loads(v) for k, v in data.items()}

        # the first query, "blue": the selection reported on the page is on the blue disc, in the bottom half
        seen = _until("a selection for 'blue'", lambda: (s := selection()).get("terms") == ["blue"] and s)
        assert seen["centre"][1] > 0.5 and _on_disc(blue, seen["index"], seen["top"]), seen
        # typing "red" moves it to the red disc, in the top half
        page.fill("#query", "red")
        page.press("#query", "Enter")
        page.wait_for_function("document.getElementById('query-msg').textContent.includes('using')")
        seen = _until(
            "a selection for 'red'",
            lambda: (s := selection()).get("terms") == ["red"] and s["centre"][1] < 0.4 and s,
            timeout_s=10,
        )
        assert _on_disc(red, seen["index"], seen["top"]), seen
        assert "red" in page.inner_text("#terms")

        # picking a channel changes the image: pos_x is a left-to-right ramp, the same on every frame
        page.select_option("#channel", "pos_x")

        def ramp() -> bool:
            grey = _image(view.screenshot()).mean(axis=2)
            columns = grey[grey.shape[0] // 4 :].mean(axis=0)  # below the label
            return bool(columns[-40:].mean() > columns[:40].mean() + 100)

        _until("the pos_x heatmap", ramp)
        page.select_option("#channel", "edge")
        _until("the edge heatmap", lambda: not ramp())
        page.select_option("#channel", "")
        page.wait_for_timeout(1000)  # a second of timeline and the overlay back, for the screenshot
        page.screenshot(path=str(tmp_path / "microscope.png"), full_page=True)
        assert (tmp_path / "microscope.png").stat().st_size > 10_000
        assert page.inner_text("#state") == "running" and float(page.inner_text("#fps").split()[0]) > 0
        browser.close()
    assert not errors, errors

    # closing the browser neither stops the engine nor leaves its MJPEG stream behind
    def status() -> dict[str, Any]:
        return httpx.get(url + "api/status", timeout=5).json()

    _until("the viewer to go", lambda: status()["viewers"] == 0)
    index = status()["frame"]["index"]
    _until("frames after the browser closed", lambda: status()["frame"]["index"] != index)


def test_sigterm_stops_the_server_cleanly(server: tuple[str, subprocess.Popen[str]]) -> None:
    url, proc = server
    with httpx.stream("GET", url + "stream.mjpg", timeout=10) as viewer:  # an open stream must not hold it up
        next(viewer.iter_bytes())
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped; engine thread joined, source closed" in out, out
    assert time.monotonic() - start < 10
