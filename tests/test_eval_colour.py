"""Tests of the colour evaluation (arr_coc_stream.evaluation.colour): pixel truth, metrics, cell boxes, rows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from arr_coc_stream.evaluation import colour as ev
from arr_coc_stream.result import cell_boxes

SKY = (0.31, 0.44, 0.65)  # real sky (bigbuckbunny.mp4), far from the web colour #0000FF
GRASS = (0.30, 0.55, 0.15)  # nearest survey name "dark grass green"


def _rgb8(rgb: tuple[float, float, float]) -> np.ndarray:
    return np.round(np.asarray(rgb) * 255).astype(np.uint8)


def _w(word: str) -> int:
    return ev.WORDS.index(word)


def test_basic_term_takes_the_last_word():
    assert ev.basic_term("dark sky blue") == "blue"
    assert ev.basic_term("blue grey") == "grey" and ev.basic_term("gray") == "grey"
    for name in ("navy", "teal", "booger", "greenish", "blue/green", "light maroon"):
        assert ev.basic_term(name) is None, name
    names, lab, word = ev.xkcd_colours()
    assert len(names) == 949 and lab.shape == (949, 3) and word.shape == (949,)
    assert word[names.index("sky blue")] == _w("blue") and word[names.index("teal")] == ev.AMBIGUOUS


def test_naming_and_hue_of_single_colours():
    rgb = np.array([SKY, GRASS, (1, 1, 1), (0.5, 0.5, 0.5), (0, 0, 0), (0.0, 0.0, 0.3)])
    named = ev.naming_words(rgb)
    assert [ev.WORDS[i] if i >= 0 else None for i in named[:5]] == ["blue", "green", "white", "grey", "black"]
    hue = ev.hue_words(rgb)
    assert hue.shape == (6, 11)
    assert hue[0, _w("blue")] and not hue[0, _w("green")] and not hue[0, _w("grey")]
    assert hue[1, _w("green")] and not hue[1, _w("blue")]
    # achromatic words by lightness and chroma: each grey level is exactly one of them
    assert [list(np.flatnonzero(hue[i, _w("white") :])) for i in (2, 3, 4)] == [[0], [1], [2]]
    assert not hue[5, _w("black")]  # a dark navy is too chromatic for black


def test_quantised_table_agrees_with_exact_naming():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2000, 3), dtype=np.uint8)
    table = ev.pixel_table()
    codes = ev.pixel_codes(pixels[None])[0]  # [N]
    centre = ((pixels.astype(np.float64) // 4) * 4 + 1.5) / 255.0  # the bin centre stands for the pixel
    named = ev.naming_words(centre)
    hue = ev.hue_words(centre)
    by_name = named[:, None] == np.arange(11)
    np.testing.assert_array_equal(table.both[codes], hue & by_name)
    np.testing.assert_array_equal(table.either[codes], hue | by_name)
    # the bin's naming matches the exact pixel's for nearly all pixels (a 4-level bin moves < 2 Lab units)
    assert (ev.naming_words(pixels / 255.0) == named).mean() > 0.9


def test_sky_grass_frame_truth():
    frame = np.zeros((64, 128, 3), np.uint8)
    frame[:, :64] = _rgb8(SKY)
    frame[:, 64:] = _rgb8(GRASS)
    truth = ev.cell_truth(frame, (4, 8))
    blue, green = truth.positive[..., _w("blue")], truth.positive[..., _w("green")]
    assert blue[:, :4].all() and not blue[:, 4:].any()
    assert green[:, 4:].all() and not green[:, :4].any()
    assert truth.negative[:, 4:, _w("blue")].all() and truth.negative[:, :4, _w("green")].all()
    assert truth.negative[..., _w("red")].all() and not truth.positive[..., _w("red")].any()


@pytest.mark.parametrize(("level", "word"), [(255, "white"), (128, "grey"), (0, "black")])
def test_achromatic_frames(level, word):
    truth = ev.cell_truth(np.full((32, 32, 3), level, np.uint8), (4, 4))
    assert truth.positive[..., _w(word)].all()
    others = [w for w in range(11) if w != _w(word)]
    assert not truth.positive[..., others].any() and truth.negative[..., others].all()


def test_mixed_cell_is_excluded():
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[:, :] = _rgb8(GRASS)
    frame[:8, :4] = _rgb8(SKY)  # half of cell (0, 0) is sky, half grass
    truth = ev.cell_truth(frame, (4, 4))
    b = _w("blue")
    assert truth.both[0, 0, b] == pytest.approx(0.5) and truth.either[0, 0, b] == pytest.approx(0.5)
    assert truth.positive[0, 0, b]  # exactly half counts as mostly
    frame[:8, :3] = _rgb8(SKY)  # 3/8 of the cell: neither positive nor negative for blue; green has 5/8
    frame[:8, 3:] = _rgb8(GRASS)
    truth = ev.cell_truth(frame, (4, 4))
    assert not truth.positive[0, 0, b] and not truth.negative[0, 0, b]
    assert truth.positive[0, 0, _w("green")]
    assert truth.negative[1:, :, b].all() and truth.negative[0, 1:, b].all()


@pytest.mark.parametrize(
    ("grid", "size"), [((32, 32), (720, 1280)), ((32, 32), (272, 640)), ((32, 32), (144, 176)), ((8, 12), (50, 61))]
)
def test_cell_boxes_match_the_engine(grid, size):
    ours = ev.cell_boxes_px(grid, size)
    np.testing.assert_array_equal(ours, cell_boxes(np.arange(grid[0] * grid[1]), grid, size))


@pytest.mark.parametrize("size", [(144, 176), (61, 50)])
def test_cell_cover_with_shared_pixel_lines(size):
    """Fractional cell sizes share pixel lines between cells: the counts equal a box-by-box loop."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    frame[: size[0] // 2] = _rgb8(SKY)  # some blocks of one colour, so covers are not all tiny
    grid = (32, 32) if size[0] > 100 else (8, 12)
    truth = ev.cell_truth(frame, grid)
    table, codes = ev.pixel_table(), ev.pixel_codes(frame)
    ref = np.array([table.both[codes[y0:y1, x0:x1]].mean((0, 1)) for x0, y0, x1, y1 in ev.cell_boxes_px(grid, size)])
    np.testing.assert_allclose(truth.both, ref.reshape(*grid, 11), atol=1e-6)
    assert truth.positive[..., _w("blue")].any()


def test_cell_truth_rejects_bad_frames():
    with pytest.raises(ValueError):
        ev.cell_truth(np.zeros((16, 16, 3), np.float32), (4, 4))
    with pytest.raises(ValueError):
        ev.cell_truth(np.zeros((8, 8, 3), np.uint8), (32, 32))


def test_rank_auc_known_answers():
    assert ev.rank_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert ev.rank_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert ev.rank_auc(np.array([1.0]), np.array([1.0])) == 0.5  # a tie counts half
    # pairs (p, n): (2,1) win, (2,3) loss, (4,1) win, (4,3) win -> 3 / 4
    assert ev.rank_auc(np.array([2.0, 4.0]), np.array([1.0, 3.0])) == 0.75
    # ties across sets: p=[1, 2], n=[1, 1]: (1,1) half twice, (2,1) win twice -> 3 / 4
    assert ev.rank_auc(np.array([1.0, 2.0]), np.array([1.0, 1.0])) == 0.75
    assert np.isnan(ev.rank_auc(np.array([]), np.array([1.0])))


def test_selection_recall_known_answers():
    pos = np.zeros((3, 2, 2), bool)
    sel = np.zeros((3, 2, 2), bool)
    pos[0, 0, :] = True  # 2 positives, 1 selected
    sel[0, 0, 0] = True
    pos[1] = True  # 4 positives: do not fit in 3 slots, left out
    pos[2, 1, 1] = True  # 1 positive, selected
    sel[2, 1, 1] = True
    recall, frames = ev.selection_recall(pos, sel, fit=3)
    assert frames == 2 and recall == pytest.approx(2 / 3)
    recall, frames = ev.selection_recall(pos, sel, fit=4)
    assert frames == 3 and recall == pytest.approx(2 / 7)
    recall, frames = ev.selection_recall(np.zeros((2, 2, 2), bool), sel[:2], fit=3)
    assert frames == 0 and np.isnan(recall)


def test_photo_frames_move():
    frames = ev.photo_frames("coffee", (0.5, 0.5, 1.0), (0.5, 0.5, 0.5), n_frames=5, size=(36, 64))
    assert len(frames) == 5 and all(f.shape == (36, 64, 3) and f.dtype == np.uint8 for f in frames)
    diffs = [np.abs(b.astype(int) - a).mean() for a, b in itertools.pairwise(frames)]
    assert min(diffs) > 0.5  # every step of the zoom changes the picture


def test_colour_rows_end_to_end():
    import torch

    threads = torch.get_num_threads()
    rows = ev.colour_rows(clips=("carphone",), words=("blue", "red"), max_frames=6, threads=1)
    assert torch.get_num_threads() == threads  # the runs' thread setting is put back
    assert [(r["clip"], r["word"]) for r in rows] == [("carphone", "blue"), ("carphone", "red")]
    blue, red = rows
    for r in rows:
        assert r["frames"] == 6 and r["negatives"] > 0
        assert r["tokens"] >= 0 and r["tokens_free"] >= 0 and 0 <= r["cells"] <= 200
    # carphone's background wall is blue-ish on every frame: present, with every metric filled in
    assert blue["status"] == "present" and blue["positives"] > 6 * ev.PRESENT_CELLS
    assert 0.0 <= blue["auc"] <= 1.0 and 0.0 <= blue["auc_free"] <= 1.0 and np.isfinite(blue["lift"])
    assert blue["recall"] is None or 0.0 <= blue["recall"] <= 1.0
    assert red["status"] == "absent" and red["auc"] is None and red["lift"] is None and red["positives"] == 0
    table = ev.format_rows(rows)
    assert table.count("\n") == 3 and "| carphone | blue" in table


def test_summary_names_each_row_below_the_bar():
    row = {
        "clip": "c",
        "word": "blue",
        "status": "present",
        "auc": 0.99,
        "recall": 0.95,
        "lift": 0.2,
        "tokens": 900,
        "tokens_free": 990,
    }
    assert ev.summary([row]).endswith("all meet it.")
    low = {**row, "auc": 0.9, "lift": -0.01}
    absent = {**row, "word": "red", "status": "absent", "auc": None, "recall": None, "lift": None, "tokens": 995}
    text = ev.summary([row, low, absent])
    assert "3 below it" in text and "c blue: AUC 0.900" in text and "lift -0.010" in text
    assert "c red (absent): 995 tokens against 990" in text


def test_eval_command_prints_the_colour_table(tmp_path, capsys):
    from arr_coc_stream.cli import main

    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--only",
                "colour",
                "--clips",
                "carphone",
                "--words",
                "blue",
                "--max-frames",
                "6",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| carphone | blue | present |" in printed and "present words" in printed
    import json

    record = json.loads(out.read_text(encoding="utf-8"))
    assert [r["word"] for r in record["colour"]] == ["blue"] and "cuts" not in record
