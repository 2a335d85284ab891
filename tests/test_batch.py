"""``arr-coc-stream batch``: many videos, each whole, in process and as a Ray Data job on a local 2-CPU Ray.

Six short clips (one of them random bytes named .mp4): the five good ones must come out exactly as
:func:`arr_coc_stream.run` makes them alone (the same cells selected on every frame, the same cuts), the bad one
as an error row naming it, without stopping the others.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

import arr_coc_stream as acs
from arr_coc_stream import cli, synth
from arr_coc_stream.batch import BatchRow, batch

QUERY = "red"
OPTIONS = {"k": 32}
BAD = 2  # the corrupt clip sits between good ones: the rows after it must still come, in order


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Six clips (index BAD corrupt) and run()'s results for each good one, as the reference."""
    folder = tmp_path_factory.mktemp("videos")
    paths = []
    for i, colour in enumerate(["red", "blue", "corrupt", "green", "red", "cuts"]):
        path = folder / f"clip{i}.mp4"
        if i == BAD:
            path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        elif colour == "cuts":  # hard cuts at frames 4 and 8: the cut column is checked against something
            synth.write_clip(synth.cuts_clip(n_frames=12, size=(128, 128)), path)
        else:
            synth.write_clip(synth.moving_object(colour, n_frames=12, size=(128, 128), object_px=24, seed=i), path)
        paths.append(str(path))
    reference = {p: acs.run(p, QUERY, **OPTIONS) for i, p in enumerate(paths) if i != BAD}
    return {"paths": paths, "reference": reference}


def _assert_matches_run(rows: list[BatchRow], out: Path, clips: dict) -> None:
    """Rows in input order; every good video's JSONL is run()'s results; the bad one is an error row naming it."""
    paths, reference = clips["paths"], clips["reference"]
    assert [r.path for r in rows] == paths
    for i, (path, row) in enumerate(zip(paths, rows)):
        if i == BAD:
            assert not row.ok and "clip2.mp4" in row.error and "SourceError" in row.error
            assert row.frames == 0 and row.output is None and not (out / "clip2.jsonl").exists()
            continue
        want = reference[path]
        assert row.ok, row.error
        assert row.output == str(out / f"clip{i}.jsonl")
        header, got = acs.read_jsonl(row.output)
        assert header["end"]["complete"] and len(got) == len(want) == row.frames == 12
        for g, w in zip(got, want):
            assert np.array_equal(g.indices[g.valid], w.indices[w.valid]), (path, w.index)
            assert g.cut == w.cut, (path, w.index)
        assert row.cuts == sum(w.cut for w in want)
        assert row.cells == pytest.approx(np.mean([w.valid.sum() for w in want]))
    assert rows[5].cuts == 2  # the cut clip's hard cuts at frames 4 and 8 were found
    with (out / "summary.csv").open(newline="") as f:
        summary = list(csv.DictReader(f))
    assert [s["path"] for s in summary] == paths and summary[BAD]["error"] == rows[BAD].error
    assert [s["error"] == "" for s in summary] == [r.ok for r in rows]


def test_batch_in_process_matches_run_and_records_the_bad_file(clips: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = batch(clips["paths"], out, query=QUERY, progress=False, **OPTIONS)
    _assert_matches_run(rows, out, clips)


def test_cli_batch_prints_the_table_and_exits_3_on_partial_failure(
    clips: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    code = cli.main(["batch", *clips["paths"], "--out", str(out), "--query", QUERY, "--k", "32", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 3
    assert "| video | frames |" in printed and "5 of 6 videos processed, 1 failed" in printed
    assert all(p in printed for p in clips["paths"]) and "SourceError" in printed
    assert len((out / "summary.csv").read_text().splitlines()) == 7


def test_cli_batch_exit_codes_all_good_and_all_failed(
    clips: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good, bad = clips["paths"][0], clips["paths"][BAD]
    assert cli.main(["batch", good, "--out", str(tmp_path / "a"), "--quiet", "--k", "32"]) == 0
    assert cli.main(["batch", bad, "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "0 of 1 videos processed" in capsys.readouterr().out


def test_a_truncated_video_is_a_failed_row_with_its_good_frames_written(tmp_path: Path) -> None:
    import av

    path = tmp_path / "cut.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:  # index up front: readable when cut
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 128, 128, "yuv420p"
        for frame in synth.moving_object(n_frames=40, size=(128, 128), object_px=24).frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
    with pytest.warns(acs.SourceWarning):
        (row,) = batch([str(path)], tmp_path / "out", progress=False, **OPTIONS)
    assert not row.ok and row.error.startswith("incomplete: ") and 0 < row.frames < 40
    header, results = acs.read_jsonl(row.output)
    assert len(results) == row.frames and header["end"]["complete"] is False


@pytest.mark.parametrize(
    "videos,out,options,phrase",
    [
        (["a.mp4"], "file", {}, "is a file"),
        (["x/a.mp4", "y/a.mp4"], "out", {}, "would both write a.jsonl"),
        (["a.mp4", "a.mp4"], "out", {}, "would both write a.jsonl"),
        ([], "out", {}, "no videos"),
        (["a.mp4"], "out", {"jsonl": "a.jsonl"}, "takes no"),
        (["a.mp4"], "out", {"k": 0}, "k must be"),
        (["a.mp4"], "out", {"actors": 0}, "actors"),
    ],
)
def test_batch_refuses_bad_usage_before_writing_anything(
    tmp_path: Path, videos: list, out: str, options: dict, phrase: str
) -> None:
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(acs.ConfigError, match=phrase):
        batch([str(tmp_path / v) for v in videos], tmp_path / out, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "keep me"


def test_cli_batch_out_that_is_a_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("keep me")
    assert cli.main(["batch", str(tmp_path / "a.mp4"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "keep me"


@pytest.mark.slow
def test_batch_on_local_ray_matches_run_and_shuts_ray_down(
    clips: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the 2-CPU machine, where whole-CPU actors would deadlock
    for name in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    rows = batch(clips["paths"], out, query=QUERY, ray_address="local", **OPTIONS)
    _assert_matches_run(rows, out, clips)
    assert not ray.is_initialized(), "batch started Ray, so it must shut it down"
    assert "RAY_AUTH_MODE" not in os.environ, "the job's environment is not left behind"
