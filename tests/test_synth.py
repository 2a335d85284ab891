"""Tests of the synthetic clip generators: shapes, ground truth (masks, motion, cuts) and encoding round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from arr_coc_stream import synth
from arr_coc_stream.errors import ConfigError


def _mean_abs_diffs(frames: list[np.ndarray]) -> np.ndarray:
    """Mean absolute difference between consecutive frames, [n - 1]."""
    return np.array([np.abs(b.astype(np.int16) - a).mean() for a, b in zip(frames, frames[1:])])


def _check_frames(clip: synth.Clip, n: int, size: tuple[int, int]) -> None:
    assert len(clip.frames) == n
    for f in clip.frames:
        assert f.shape == (*size, 3) and f.dtype == np.uint8
    if clip.masks is not None:
        assert len(clip.masks) == n
        for m in clip.masks:
            assert m.shape == size and m.dtype == bool and m.any()


@pytest.mark.parametrize("colour", ["red", "blue", "#20c040"])
def test_moving_object_ground_truth(colour):
    clip = synth.moving_object(colour, n_frames=30, size=(240, 320), seed=1)
    _check_frames(clip, 30, (240, 320))
    rgb = synth.colour_rgb(colour)
    for frame, mask in zip(clip.frames, clip.masks):
        assert (frame[mask] == rgb).all()
        # the whole disc is inside the frame: it never touches the border
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        assert abs(mask.sum() - np.pi * 24**2) < 0.05 * np.pi * 24**2
        assert synth.near_colour_fraction(frame[~mask], rgb) < synth.MAX_NEAR_FRACTION
    centroids = np.array([np.argwhere(m).mean(axis=0) for m in clip.masks])
    steps = np.linalg.norm(np.diff(centroids, axis=0), axis=1)
    assert steps.min() > 3.0 and steps.max() < 6.0
    assert clip.query == (None if colour.startswith("#") else f"where is the {colour} ball?")


def test_moving_object_is_deterministic_and_seeded():
    a, b = synth.moving_object(seed=3, n_frames=5), synth.moving_object(seed=3, n_frames=5)
    c = synth.moving_object(seed=4, n_frames=5)
    assert all((x == y).all() for x, y in zip(a.frames, b.frames))
    assert any((x != y).any() for x, y in zip(a.masks, c.masks))


def test_backgrounds_free_of_object_colour():
    for colour in synth.COLOURS:
        clip = synth.moving_object(colour, n_frames=2)
        background = clip.frames[0][~clip.masks[0]]
        assert synth.near_colour_fraction(background, synth.COLOURS[colour]) < 0.01, colour


def test_two_objects_have_separate_masks():
    red, blue = synth.two_objects()
    assert red.frames is blue.frames
    assert (red.query, blue.query) == ("where is the red ball?", "where is the blue ball?")
    _check_frames(red, 24, (256, 256))
    _check_frames(blue, 24, (256, 256))
    for frame, mr, mb in zip(red.frames, red.masks, blue.masks):
        assert not (mr & mb).any()
        assert (frame[mr] == synth.COLOURS["red"]).all() and (frame[mb] == synth.COLOURS["blue"]).all()


def test_text_region():
    clip = synth.text_region()
    _check_frames(clip, 24, (256, 256))
    assert clip.query == "text"
    for m in clip.masks:
        assert 1 / 6 <= m.mean() <= 1 / 4
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert m.sum() == len(rows) * len(cols)  # a rectangle
    # text is dark strokes on a light page: high contrast inside the patch
    inside = clip.frames[0][clip.masks[0]].mean(axis=1)
    assert inside.std() > 30


@pytest.mark.parametrize("make, shift", [(synth.pan, (0, 4)), (synth.shifted, (0, 8)), (synth.pan, (-3, 2))])
def test_pan_shifts_content_exactly(make, shift):
    clip = make(n_frames=6, shift=shift)
    dy, dx = shift
    assert clip.shift_px == (dy, dx) and clip.cuts == []
    h, w = clip.frames[0].shape[:2]
    for a, b in zip(clip.frames, clip.frames[1:]):
        # content moved by +shift: b[y + dy, x + dx] == a[y, x] on the overlap
        ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
        ya, xa = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
        assert (b[ys, xs] == a[ya, xa]).all()
        assert (a != b).any()


def test_pan_rejects_fractional_shift():
    with pytest.raises(ConfigError):
        synth.pan(shift=(0, 2.5))


def test_fade_is_gradual():
    clip = synth.fade()
    _check_frames(clip, 50, (256, 256))
    assert clip.cuts == []
    diffs = _mean_abs_diffs(clip.frames)
    total = np.abs(clip.frames[-1].astype(np.int16) - clip.frames[0]).mean()
    assert total > 40 and diffs.max() < total / 25


def test_static_is_noise_only():
    clip = synth.static()
    _check_frames(clip, 30, (256, 256))
    diffs = _mean_abs_diffs(clip.frames)
    assert 0.5 < diffs.min() and diffs.max() < 3.0


def test_cuts_clip_cuts_exactly_at_cuts():
    clip = synth.cuts_clip()
    _check_frames(clip, 60, (256, 256))
    assert clip.cuts == [20, 40]
    diffs = _mean_abs_diffs(clip.frames)
    at_cut = diffs[[c - 1 for c in clip.cuts]]
    elsewhere = np.delete(diffs, [c - 1 for c in clip.cuts])
    assert at_cut.min() > 40 and elsewhere.max() < 15


def test_bad_arguments_raise_config_error():
    for call in (
        lambda: synth.moving_object("#12345g"),
        lambda: synth.static(n_frames=0),
        lambda: synth.moving_object(photo="no_such_photo"),
        lambda: synth.fade(n_frames=20, hold=10),
    ):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("fps", [25.0, 29.97, 30000 / 1001])
def test_write_clip_round_trip(tmp_path, fps):
    import av

    clip = synth.moving_object(n_frames=12, size=(120, 160), object_px=30)
    clip.fps = fps
    path = synth.write_clip(clip, tmp_path / "clip.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert abs(float(stream.average_rate) - fps) < 0.01
        frames = [f for f in container.decode(stream)]
    assert len(frames) == 12
    assert (frames[0].height, frames[0].width) == (120, 160)
    assert [round(float(f.time), 4) for f in frames] == [round(i / float(stream.average_rate), 4) for i in range(12)]
    decoded = frames[5].to_ndarray(format="rgb24").astype(np.int16)
    assert np.abs(decoded - clip.frames[5]).mean() < 4


def test_write_clip_rejects_odd_size(tmp_path):
    clip = synth.static(n_frames=2, size=(101, 100))
    with pytest.raises(ConfigError):
        synth.write_clip(clip, tmp_path / "odd.mp4")


def test_default_clip_is_cached(tmp_path, monkeypatch):
    import av

    monkeypatch.setenv("ARR_COC_STREAM_CACHE", str(tmp_path / "cache"))
    path, query = synth.default_clip()
    assert path == tmp_path / "cache" / "default_clip.mp4" and query == "where is the red ball?"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.frames, stream.average_rate) == (640, 360, 150, 25)
    mtime = path.stat().st_mtime_ns
    assert synth.default_clip() == (path, query)
    assert path.stat().st_mtime_ns == mtime
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind

    path.write_bytes(b"not a video")  # a corrupt cache is rebuilt
    assert synth.default_clip()[0] == path and path.stat().st_size > 10_000
