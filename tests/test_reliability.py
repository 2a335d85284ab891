"""Reliability on bad input and early ends (issue 13): typed errors naming the input, nothing written damaged, an
engine state no rejected frame can touch, strict JSON, streams that close their source and threads however they
end, truncated files and still images.

The bad-input table runs every row against outputs an earlier good run already wrote, and checks they are byte
for byte what they were (options are checked before anything is opened), along with the source file itself.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

import arr_coc_stream as acs
from arr_coc_stream import cli, synth
from arr_coc_stream.errors import (
    InputError,
    InputTypeError,
    MissingExtraError,
    OutputError,
    SourceWarning,
)
from arr_coc_stream.sinks import JsonlSink
from arr_coc_stream.sources import IterableSource, VideoFileSource

ROOT = Path(__file__).resolve().parents[1]
SIZE = (96, 128)  # (H, W) of the small test video
N_FRAMES = 20


def _encode(path: Path, n: int = N_FRAMES, faststart: bool = False) -> Path:
    """``n`` frames of a moving red square, H.264 in MP4 at 25 fps (index up front when ``faststart``)."""
    clip = synth.moving_object(n_frames=n, size=SIZE)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "20", "preset": "veryfast"})
        stream.height, stream.width, stream.pix_fmt = *SIZE, "yuv420p"
        for frame in clip.frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("arr_coc_stream-")]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A video, outputs of a good run of it (JSONL, overlay), a still image, a truncated and a headless MP4."""
    d = tmp_path_factory.mktemp("reliability")
    video = _encode(d / "video.mp4")
    jsonl, overlay = d / "good.jsonl", d / "good.mp4"
    acs.run(video, "red", jsonl=jsonl, overlay=overlay, k=64)
    whole = _encode(d / "faststart.mp4", n=60, faststart=True).read_bytes()
    (d / "truncated.mp4").write_bytes(whole[: len(whole) * 6 // 10])  # index up front, the media data cut
    (d / "no_index.mp4").write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # index at the end, cut
    image = GOOD[0]
    with av.open(str(d / "still.png"), "w") as out:  # a real PNG, written by FFmpeg's encoder
        s = out.add_stream("png")
        s.height, s.width, s.pix_fmt = *SIZE, "rgb24"
        out.mux(s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(s.encode())
    (d / "folder").mkdir()
    return {
        "video": video,
        "jsonl": jsonl,
        "overlay": overlay,
        "still": d / "still.png",
        "truncated": d / "truncated.mp4",
        "no_index": d / "no_index.mp4",
        "folder": d / "folder",
        "dir": d,
    }


def _evil_clip(tiny_clip: Path, folder: Path) -> Path:
    """A copy of the tiny CLIP whose weights are a pickle that would run a command when unpickled."""
    import shutil

    evil = folder / "evil-clip"
    shutil.copytree(tiny_clip, evil)
    for f in evil.glob("*.safetensors"):
        f.unlink()

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (folder / "PWNED",))

    torch.save({"weight": Payload()}, evil / "pytorch_model.bin")
    return evil


# Each row: (name, the call's arguments built from the files, the error type, the text naming the input). The
# call is acs.run(source, **kwargs) with jsonl/overlay pointing at the good run's files unless the row sets them.
TABLE: list[tuple[str, Callable[[dict[str, Path]], dict[str, Any]], type[Exception], str]] = [
    ("k as a string", lambda f: {"k": "200"}, acs.ConfigError, "k must be an int, got '200'"),
    ("k out of range", lambda f: {"k": 5000}, acs.ConfigError, "k must be in"),
    ("grid not a pair", lambda f: {"grid": 5}, acs.ConfigError, "grid must be"),
    ("motion_boost infinite", lambda f: {"motion_boost": math.inf}, acs.ConfigError, "motion_boost"),
    ("unknown option", lambda f: {"kk": 3}, acs.ConfigError, "kk"),
    ("unknown backend", lambda f: {"backend": "cuda"}, acs.ConfigError, "backend 'cuda'"),
    ("query not text", lambda f: {"query": 123}, acs.QueryError, "query must be a str"),
    ("overlay_scale 0", lambda f: {"overlay_scale": 0}, acs.ConfigError, "overlay_scale"),
    ("overlay_scale NaN", lambda f: {"overlay_scale": math.nan}, acs.ConfigError, "overlay_scale"),
    ("overlay not MP4", lambda f: {"overlay": f["dir"] / "out.avi"}, acs.ConfigError, "out.avi"),
    ("plot of unknown kind", lambda f: {"plot": f["dir"] / "plot.xyz"}, acs.ConfigError, "plot.xyz"),
    ("max_frames 0", lambda f: {"max_frames": 0}, acs.ConfigError, "max_frames"),
    ("callback not callable", lambda f: {"callbacks": [3]}, acs.ConfigError, "callbacks[0]"),
    ("jsonl is a folder", lambda f: {"jsonl": f["folder"]}, acs.ConfigError, "folder"),
    ("jsonl is the source", lambda f: {"jsonl": f["video"]}, acs.ConfigError, "is also the source"),
    (
        "overlay is the jsonl",
        lambda f: {"overlay": f["overlay"], "jsonl": f["overlay"]},
        acs.ConfigError,
        "is also the jsonl output",
    ),
    ("missing file", lambda f: {"source": f["dir"] / "nope.mp4"}, acs.SourceError, "nope.mp4"),
    ("still image", lambda f: {"source": f["still"]}, acs.SourceError, "still.png' is a still image"),
    ("MP4 cut before its index", lambda f: {"source": f["no_index"]}, acs.SourceError, "no_index.mp4"),
    ("source of no kind", lambda f: {"source": 3.5}, acs.SourceError, "float"),
    ("frame of floats", lambda f: {"source": [np.zeros((8, 8, 3), np.float32)]}, acs.SourceError, "dtype"),
]


@pytest.mark.parametrize("name, make, error, text", TABLE, ids=[row[0] for row in TABLE])
def test_bad_input_table(
    files: dict[str, Path],
    name: str,
    make: Callable[[dict[str, Path]], dict[str, Any]],
    error: type[Exception],
    text: str,
) -> None:
    kwargs = {"jsonl": files["jsonl"], "overlay": files["overlay"], **make(files)}
    source = kwargs.pop("source", files["video"])
    query = kwargs.pop("query", "red")
    before = {p: _digest(p) for p in (files["jsonl"], files["overlay"], files["video"])}
    with pytest.raises(error) as info:
        acs.run(source, query, **kwargs)
    assert isinstance(info.value, acs.ArrCocError) and text in str(info.value), str(info.value)
    assert {p: _digest(p) for p in before} == before  # nothing already written was touched, the source neither
    assert not _source_threads()


def test_unsafe_clip_pickle_is_refused_not_run(files: dict[str, Path], tiny_clip: Path) -> None:
    pytest.importorskip("transformers")
    evil = _evil_clip(tiny_clip, files["dir"])
    before = _digest(files["jsonl"])
    with pytest.raises(acs.ModelError, match="evil-clip.*refused, not run") as info:
        acs.run(files["video"], "red", jsonl=files["jsonl"], clip_model=evil)
    assert info.value.__cause__ is not None  # the loader's own error is kept as the cause
    assert not (files["dir"] / "PWNED").exists() and _digest(files["jsonl"]) == before


# Engine.process: (name, the call's keyword arguments, the error type, the input named in the message)
GOOD = synth.moving_object(n_frames=3, size=SIZE).frames
PROCESS_TABLE: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("time NaN", {"time": math.nan}, InputError, "time must be finite, got nan"),
    ("time inf", {"time": math.inf}, InputError, "time must be finite, got inf"),
    ("time as a string", {"time": "0.04"}, InputTypeError, "time must be a number of seconds, got '0.04'"),
    ("time as a bool", {"time": True}, InputTypeError, "time must be a number"),
    ("frame None", {"frame": None}, InputTypeError, "frame 1: expected an HxWx3 uint8"),
    ("frame of floats", {"frame": GOOD[1].astype(np.float32)}, InputTypeError, "float32"),
    ("frame of zero size", {"frame": np.zeros((0, 0, 3), np.uint8)}, InputError, "(0, 0, 3)"),
    ("frame grey", {"frame": GOOD[1][..., 0]}, InputError, f"{SIZE}"),
    ("frame RGBA", {"frame": np.zeros((*SIZE, 4), np.uint8)}, InputError, "(96, 128, 4)"),
    ("index negative", {"index": -1}, InputError, "index must be >= 0"),
    ("index as a string", {"index": "3"}, InputTypeError, "index must be an int"),
    ("source_size zero", {"source_size": (0, 5)}, InputError, "source_size[0] must be >= 1"),
]


@pytest.mark.parametrize("name, kwargs, error, text", PROCESS_TABLE, ids=[row[0] for row in PROCESS_TABLE])
def test_rejected_frame_leaves_the_engine_as_it_was(
    name: str, kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    engine, twin = acs.Engine(k=64), acs.Engine(k=64)
    for e in (engine, twin):
        e.process(GOOD[0], time=0.0)
    state = {k: v.clone() for k, v in engine.state.items()}
    with pytest.raises(error) as info:
        engine.process(**{"frame": GOOD[1], "time": 0.04, **kwargs})
    assert text in str(info.value) and isinstance(info.value, ValueError) and isinstance(info.value, acs.ArrCocError)
    assert issubclass(error, TypeError) == isinstance(info.value, TypeError)
    assert all(torch.equal(state[k], v) for k, v in engine.state.items()) and engine.frames_processed == 1
    # the next good frame is scored as if the bad one never came
    a, b = engine.process(GOOD[1], time=0.04), twin.process(GOOD[1], time=0.04)
    np.testing.assert_array_equal(a.relevance, b.relevance)
    assert np.isfinite(a.relevance).all() and a.valid.any()


def test_non_finite_state_is_refused_and_reset_restores_a_fresh_engine() -> None:
    engine, fresh = acs.Engine(k=64), acs.Engine(k=64)
    for t, frame in enumerate(GOOD):
        engine.process(frame, time=0.04 * t)
    good_state = {k: v.clone() for k, v in engine.state.items()}
    runner = engine.runner

    def broken(inputs: dict[str, torch.Tensor], timings: dict[str, float]) -> dict[str, torch.Tensor]:
        out = dict(runner(inputs, timings))
        out["relevance_out"] = torch.full_like(out["relevance_out"], math.nan)  # a backend gone wrong
        return out

    engine.runner = broken
    with pytest.raises(acs.ModelError, match=r"non-finite values in state \['relevance'\]"):
        engine.process(GOOD[0], time=0.2)
    assert all(torch.equal(good_state[k], v) for k, v in engine.state.items())
    engine.runner = runner
    engine.reset()
    assert all(torch.equal(v, fresh.state[k]) for k, v in engine.state.items())
    a, b = engine.process(GOOD[2], time=5.0), fresh.process(GOOD[2], time=5.0)
    np.testing.assert_array_equal(a.relevance, b.relevance)
    assert a.reset and np.array_equal(a.indices, b.indices)


def test_jsonl_lines_are_strict_json_even_with_non_finite_numbers(tmp_path: Path) -> None:
    result = acs.Engine(k=64).process(GOOD[0], time=0.0)
    result.relevance[0, 0], result.scene_score, result.time = math.nan, math.inf, -math.inf
    path = tmp_path / "nan.jsonl"
    with JsonlSink(path, {"note": math.nan}) as sink:
        sink.write(result)
        sink.end(True)

    def no_constants(token: str) -> None:
        raise AssertionError(f"non-JSON token {token}")

    lines = [json.loads(line, parse_constant=no_constants) for line in path.read_text().splitlines()]
    assert lines[0]["note"] is None and lines[1]["relevance"][0][0] is None and lines[1]["scene_score"] is None
    header, back = acs.read_jsonl(path)
    assert math.isnan(back[0].relevance[0, 0]) and math.isnan(back[0].scene_score) and header["end"]["complete"]


def test_jsonl_that_cannot_be_created_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file/out.jsonl") as info:
        JsonlSink(tmp_path / "file" / "out.jsonl", {})
    assert isinstance(info.value, OSError) and info.value.__cause__ is not None


@pytest.mark.parametrize("how", ["break", "close", "with", "collected", "config rejected"])
def test_stream_closes_its_source_and_threads(files: dict[str, Path], how: str) -> None:
    src = VideoFileSource(files["video"], size=(64, 64), queue_size=2)  # decodes ahead: its thread waits
    assert not _source_threads()
    if how == "break":
        for _ in acs.stream(src, "red", k=64):
            assert _source_threads()
            break
    elif how == "close":
        s = acs.stream(src, "red", k=64)
        next(s)
        s.close()
        assert s.complete is False and s.reason == "stopped before the end of the source"
    elif how == "with":
        with acs.stream(src, "red", k=64) as s:
            next(s)
    elif how == "collected":
        s = acs.stream(src, "red", k=64)
        next(s)
        del s
        gc.collect()
    else:
        with pytest.raises(acs.ConfigError):
            next(acs.stream(src, "red", k=0))
    assert not _source_threads()
    with pytest.raises(acs.SourceError, match="closed"):  # the stream closed the source it was given
        iter(src)


def test_truncated_file_warns_with_the_last_good_frame_and_is_marked_incomplete(files: dict[str, Path]) -> None:
    jsonl = files["dir"] / "truncated.jsonl"
    with pytest.warns(SourceWarning, match=r"truncated.mp4' is truncated or damaged: it ends after frame (\d+)") as w:
        results = acs.run(files["truncated"], "red", jsonl=jsonl, k=64)
    last = int(str(w[0].message).split("ends after frame ")[1].split()[0])
    assert 0 < len(results) < 60 and results[-1].index == last
    assert results.complete is False and "of 60 declared frames" in results.reason
    header, back = acs.read_jsonl(jsonl)
    assert [r.index for r in back] == [r.index for r in results]
    assert header["end"] == {"frames": len(results), "complete": False, "reason": results.reason}


def test_whole_file_is_complete_without_a_warning(files: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SourceWarning)
        results = acs.run(files["video"], "red", k=64, jsonl=files["dir"] / "whole.jsonl")
    assert len(results) == N_FRAMES and results.complete is True and results.reason is None
    assert acs.read_jsonl(files["dir"] / "whole.jsonl")[0]["end"] == {
        "frames": N_FRAMES,
        "complete": True,
        "reason": None,
    }


def test_error_mid_stream_ends_the_jsonl_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    with pytest.raises(acs.SourceError, match="frame 2"):
        acs.run(IterableSource([*GOOD[:2], np.zeros(SIZE, np.uint8)]), jsonl=path, k=64)
    header, back = acs.read_jsonl(path)
    assert [r.index for r in back] == [0, 1]
    assert header["end"]["complete"] is False and "SourceError: frame 2" in header["end"]["reason"]


def test_missing_plot_extra_is_one_line_naming_it(files: dict[str, Path]) -> None:
    out = files["dir"] / "no-mpl.png"
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if matplotlib were not installed
        "from arr_coc_stream.cli import main\n"
        f"sys.exit(main(['run', {str(files['video'])!r}, '--plot', {str(out)!r}, '--jsonl', "
        f"{str(out.with_suffix('.jsonl'))!r}, '--quiet']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        (
            "arr-coc-stream: error: the timeline plot (plot=...) needs the "
            "'plot' extra: pip install 'arr_coc_stream[plot]'"
        )
    ]
    assert not out.exists() and not out.with_suffix(".jsonl").exists()  # refused before any output was opened


def test_missing_module_of_an_extra_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    def needs(module: str) -> Callable[[argparse.Namespace], int]:
        def command(args: argparse.Namespace) -> int:
            __import__(module)
            return 0

        return command

    monkeypatch.setitem(sys.modules, "scenedetect", None)  # as if PySceneDetect were not installed
    parser = argparse.ArgumentParser(prog="p")
    parser.set_defaults(func=needs("scenedetect"))
    assert cli._run(parser, [], "p") == 2
    assert capsys.readouterr().err == "p: error: scenedetect is not installed: pip install 'arr_coc_stream[bench]'\n"
    monkeypatch.setitem(sys.modules, "no_extra_has_this", None)
    parser.set_defaults(func=needs("no_extra_has_this"))
    with pytest.raises(ModuleNotFoundError):  # a module of no extra is a bug, not a missing install: it propagates
        cli._run(parser, [], "p")
    assert issubclass(MissingExtraError, ImportError) and MissingExtraError("x", "plot").extra == "plot"
