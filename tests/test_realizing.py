"""Realizing stage (DESIGN.md section 6): cut detector, cut statistics, coarse flow, backward warp and blend.

The cut detector's functions run on scikit-image photographs (and blown-out or shifted copies of them); its
behaviour on flashes, exposure changes, dissolves, fades, close cuts and jump cuts runs through the engine on
generated shots of those photographs. Images for the flow are random noise shifted by a known number of pixels.
Expected values come from the stage's documented formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

import arr_coc_stream as acs
from arr_coc_stream import realizing, synth
from arr_coc_stream.channels import NUM_CHANNELS, idx
from arr_coc_stream.sources import IterableSource

DT = 1.0 / 30.0
THRESHOLD, MIN_SCENE_S = 0.5, 0.15
GRID = (16, 16)


def _texture(bsz: int = 1, gh: int = 8, gw: int = 8, **channels: Tensor | float) -> Tensor:
    """A zero texture [B, NUM_CHANNELS, gh, gw] with the named channels set."""
    tex = torch.zeros(bsz, NUM_CHANNELS, gh, gw)
    for name, value in channels.items():
        tex[:, idx(name)] = value
    return tex


# ---------------------------------------------------------------------------------------------------------------
# cut detector: the functions

N, SMALL = realizing.CUT_HISTORY, 64


def _photo(name: str = "astronaut", size: int = 256) -> Tensor:
    """A scikit-image photograph as a work-resolution frame [1, 3, size, size] in [0, 1]."""
    import skimage.data
    from skimage.transform import resize

    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
    image = resize(image / 255.0, (size, size), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float()


def _small(rgb: Tensor) -> Tensor:
    """[B, 3, 256, 256] -> its flow-resolution luminance [B, 1, 64, 64], as the graph makes it."""
    luma = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    return torch.nn.functional.avg_pool2d(luma, realizing.FLOW_DOWNSCALE)


def _state(rgb: Tensor, since: float = 5.0, mean: float = 0.1) -> dict[str, Tensor]:
    """A detector state whose history is ``rgb`` [B, 3, H, W] in every slot."""
    small, bsz = _small(rgb), rgb.shape[0]
    return {
        "feat_hist": realizing.cut_features(small, rgb)[:, None].repeat(1, N, 1),
        "luma_hist": small.repeat(1, N, 1, 1),
        "motion": torch.zeros(bsz, 2),
        "mean": torch.full((bsz,), mean),
        "since": torch.full((bsz,), since),
    }


def _step(
    rgb: Tensor, state: dict[str, Tensor], reset: list[bool] | None = None, min_scene_s: float = MIN_SCENE_S
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """One detect_cut step on frames [B, 3, H, W]: (score, cut, next state)."""
    bsz = rgb.shape[0]
    small = _small(rgb)
    reset_t = torch.tensor(reset if reset is not None else [False] * bsz)
    score, cut, feat_hist, luma_hist, mean, since = realizing.detect_cut(
        realizing.cut_features(small, rgb),
        small,
        state["feat_hist"],
        state["luma_hist"],
        state["motion"],
        state["mean"],
        state["since"],
        torch.full((bsz,), DT),
        reset_t,
        THRESHOLD,
        min_scene_s,
    )
    return (
        score,
        cut,
        {"feat_hist": feat_hist, "luma_hist": luma_hist, "motion": state["motion"], "mean": mean, "since": since},
    )


def test_cut_features_ignore_global_gain_and_offset() -> None:
    rgb = 0.1 + 0.6 * _photo()
    small = _small(rgb)
    feat = realizing.cut_features(small, rgb)
    assert feat.shape == (1, realizing.CUT_FEATURES) and torch.isfinite(feat).all()
    lit = realizing.cut_features(1.3 * small + 0.05, 1.3 * rgb + 0.05)  # brighter, no clipping
    other = realizing.cut_features(_small(_photo("coffee")), _photo("coffee"))
    # close, not equal: the z-score's epsilon weighs a little more in the lower-contrast frame
    assert (lit - feat).abs().mean() < 0.1 * (other - feat).abs().mean()


def test_structure_distance_ignores_smooth_lighting_and_sees_other_content() -> None:
    small = _small(0.1 + 0.6 * _photo())
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SMALL), torch.linspace(-1, 1, SMALL), indexing="ij")
    flash = 1.0 + 1.2 * torch.exp(-(yy**2 + xx**2) / 0.7)  # brightest at the centre, like a camera flash
    lit = torch.clamp(small * flash + 0.05, 0.0, 1.0)
    refs = torch.cat([small, lit, _small(_photo("coffee")), torch.full_like(small, 0.5)], dim=1)  # [1, 4, 64, 64]
    assert (lit >= realizing.CUT_CLIP_HIGH).float().mean() > 0.05  # part of the frame is blown out
    same, flashed, other, flat = realizing.structure_distance(small, refs)[0].tolist()
    assert same < 0.1  # not 0: CUT_NCC_EPS discounts the correlation of low-contrast blocks a little
    assert flashed < same + 0.05 and other > 0.8
    assert flat > 0.5  # structure that disappears without a change of exposure is a change
    # a frame without contrast (black) is close to everything: no evidence of a change
    black = torch.zeros_like(small)
    assert realizing.structure_distance(black, refs).max() < 0.05


@pytest.mark.parametrize("dx,dy", [(3, 0), (-2, 1), (0, -4)])
def test_translate_moves_content(dx: int, dy: int) -> None:
    image = _small(_photo())
    moved = realizing.translate(image, torch.tensor([[float(dx), float(dy)]]))
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))
    h, w = image.shape[-2:]
    source = (slice(None), slice(None), slice(5 - dy, h - 5 - dy), slice(5 - dx, w - 5 - dx))
    assert torch.allclose(moved[inner], image[source], atol=1e-5)  # whole pixels: exact inside the frame
    half = realizing.translate(image, torch.tensor([[dx + 0.5, float(dy)]]))
    further = realizing.translate(image, torch.tensor([[dx + 1.0, float(dy)]]))
    assert torch.allclose(half[inner], 0.5 * (moved + further)[inner], atol=1e-5)  # bilinear between pixels


def test_next_motion_smooths_and_restarts() -> None:
    flow = torch.zeros(2, 2, 32, 32)
    flow[:, 0] = 1.0  # one cell (2 flow-resolution pixels) to the right
    motion_in = torch.tensor([[0.0, 0.0], [4.0, 4.0]])
    out = realizing.next_motion(motion_in, flow, (SMALL, SMALL), torch.tensor([False, True]))
    keep = realizing.CUT_MOTION_KEEP
    assert out[0].tolist() == pytest.approx([(1 - keep) * 2.0, 0.0])
    assert out[1].tolist() == [0.0, 0.0]  # a fresh state predicts no motion


def test_new_content_is_a_cut_and_restarts_the_shot() -> None:
    score, cut, state = _step(_photo("coffee"), _state(_photo()))
    assert cut.item() and score.item() > 0.7
    assert state["since"].item() == 0.0 and state["mean"].item() == pytest.approx(realizing.CUT_MEAN_PRIOR)
    # the history shifts by one: the new frame in front, the old shot behind it
    assert torch.equal(state["luma_hist"][:, 0:1], _small(_photo("coffee")))
    assert torch.equal(state["luma_hist"][:, 1:], _state(_photo())["luma_hist"][:, : N - 1])


def test_same_frame_is_no_cut_and_feeds_the_running_mean() -> None:
    score, cut, state = _step(_photo(), _state(_photo(), since=0.5, mean=0.3))
    assert not cut.item() and score.item() == pytest.approx(0.0, abs=1e-3)
    assert state["mean"].item() < 0.3 and state["since"].item() == pytest.approx(0.5 + DT)


def test_return_to_the_frame_before_a_flash_is_no_cut() -> None:
    """Three blown-out frames, then the shot again: the frame kept from before the flash matches it."""
    white = torch.ones(1, 3, 256, 256)
    state = _state(_photo())
    for _ in range(3):
        _, cut, state = _step(white, state)
        assert not cut.item()  # a frame without contrast is no evidence of a change
    score, cut, _ = _step(_photo(), state)
    assert not cut.item() and score.item() < 0.1


def test_a_return_after_history_length_frames_of_other_content_is_a_cut() -> None:
    """Up to CUT_HISTORY - 1 frames of other content that return to the shot look like a flash; one more does not."""
    for other, expected in ((N - 1, False), (N, True)):
        state = _state(_photo())
        for _ in range(other):
            _, _, state = _step(_photo("coffee"), state, min_scene_s=0.0)
        assert _step(_photo(), state, min_scene_s=0.0)[1].item() is expected


def test_a_steady_pan_is_predicted_and_a_jump_is_not() -> None:
    image = _photo()
    state = _state(image, mean=0.5)
    panned = torch.roll(image, 8, dims=-1)  # 8 work pixels = 2 flow-resolution pixels to the right
    score, cut, _ = _step(panned, state)
    assert cut.item() and score.item() > THRESHOLD  # unexpected in a still shot: a jump cut inside one set
    state["motion"] = torch.tensor([[2.0, 0.0]])  # the same shift as the continuation of a pan
    score, cut, _ = _step(panned, state)
    assert not cut.item() and score.item() < 0.3
    assert _step(torch.roll(image, 40, dims=-1), state)[1].item()  # a jump beyond the pan's motion still cuts


def test_no_cut_within_min_scene_length() -> None:
    score, cut, state = _step(_photo("coffee"), _state(_photo(), since=MIN_SCENE_S - 2 * DT))
    assert score.item() > THRESHOLD and not cut.item()
    assert state["since"].item() == pytest.approx(MIN_SCENE_S - DT)  # no reset: time keeps counting
    assert _step(_photo("coffee"), _state(_photo(), since=MIN_SCENE_S - DT / 2))[1].item()  # just past it


def test_reset_zeroes_score_and_fills_the_history() -> None:
    score, cut, state = _step(_photo("coffee"), _state(_photo()), reset=[True])
    assert score.item() == 0.0 and not cut.item()
    assert state["since"].item() == 0.0 and state["mean"].item() == pytest.approx(realizing.CUT_MEAN_PRIOR)
    assert torch.equal(state["luma_hist"], _small(_photo("coffee")).repeat(1, N, 1, 1))


def test_streams_in_a_batch_are_independent() -> None:
    prev = torch.cat([_photo(), _photo()])
    frames = torch.cat([_photo("coffee"), _photo()])  # stream 0 cuts, stream 1 holds
    score, cut, state = _step(frames, _state(prev))
    assert cut.tolist() == [True, False] and score[1].item() < 0.01
    assert state["since"].tolist() == pytest.approx([0.0, 5.0 + DT])
    score, cut, state = _step(frames, _state(prev), reset=[False, True])
    assert cut.tolist() == [True, False] and score[1].item() == 0.0
    assert state["since"].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------
# cut detector: the engine on shots of real photographs (25 fps)

FPS = 25.0


def _shot(photo: str, n: int, shift: tuple[int, int] = (0, 2), seed: int = 0) -> list[np.ndarray]:
    """``n`` frames of a camera panning over a photograph (``shift`` px/frame), with sensor noise."""
    rng = np.random.default_rng(seed)
    frames = synth.pan(n_frames=n, shift=shift, photo=photo).frames
    return [np.clip(f + rng.normal(0.0, 1.5, f.shape), 0, 255).astype(np.uint8) for f in frames]


def _lit(frames: list[np.ndarray], gains: list[float], flash: list[float] | None = None) -> list[np.ndarray]:
    """Frames under a gain per frame, and a flash of the given strength per frame (brightest at the centre)."""
    h, w = frames[0].shape[:2]
    yy, xx = np.mgrid[:h, :w]
    falloff = np.exp(-(((yy - h / 2) / (0.6 * h)) ** 2 + ((xx - w / 2) / (0.6 * w)) ** 2))[..., None]
    flash = flash or [0.0] * len(frames)
    return [
        np.clip((f * (1.0 + 1.5 * s * falloff) + 70.0 * s * falloff) * g, 0, 255).astype(np.uint8)
        for f, g, s in zip(frames, gains, flash)
    ]


def _run(frames: list[np.ndarray]) -> tuple[list[int], float]:
    """The engine's cut frames and highest scene score."""
    results = acs.run(IterableSource(frames, fps=FPS))
    return [r.index for r in results if r.cut], max(r.scene_score for r in results)


@pytest.mark.parametrize("photo,shift", [("coffee", (0, 0)), ("astronaut", (0, 3))])
@pytest.mark.parametrize("length", [1, 2, 3])
def test_a_camera_flash_inside_a_shot_is_no_cut(photo: str, shift: tuple[int, int], length: int) -> None:
    shot = _shot(photo, 30, shift)
    strength = [0.0] * 12 + [1.0, 0.6, 0.35][:length] + [0.0] * (18 - length)  # decaying, blowing out the centre
    lit = _lit(shot, [1.0] * 30, strength)
    assert np.mean(lit[12] >= 250) > 0.1  # the flash really blows out part of the frame
    cuts, _ = _run(lit)
    assert cuts == []
    # the same frames with a cut to another photo half-way are still cut there
    assert _run(lit[:20] + _shot("rocket", 15))[0] == [20]


@pytest.mark.parametrize(
    "gains",
    [
        pytest.param([1.0] * 8 + list(np.linspace(1.0, 1.8, 25)) + [1.8] * 7, id="exposure-ramp-up"),
        pytest.param([1.0] * 8 + list(np.linspace(1.0, 0.4, 25)) + [0.4] * 7, id="exposure-ramp-down"),
        pytest.param([1.0] * 10 + [0.55 + 0.45 * min(t / 12, 1.0) for t in range(30)], id="auto-gain-drop"),
        pytest.param([1.0] * 10 + [1.6] * 30, id="gain-jump-up"),
    ],
)
def test_exposure_and_gain_changes_are_no_cut(gains: list[float]) -> None:
    cuts, score = _run(_lit(_shot("chelsea", 40, (1, 1)), gains))
    assert cuts == [] and score < THRESHOLD


def test_slow_dissolve_and_fade_are_no_cut() -> None:
    a, b = _shot("coffee", 60, (0, 2)), _shot("astronaut", 60, (1, 0), seed=1)
    n = 38  # 1.5 s
    alpha = (np.arange(n) + 1.0) / (n + 1)
    dissolve = a[:20] + [np.rint((1 - w) * x + w * y).astype(np.uint8) for w, x, y in zip(alpha, a[20:], b)] + b[n:]
    assert _run(dissolve)[0] == []
    n = 30  # 1.2 s to black, 1.2 s back
    fade = (
        a[:10]
        + [np.rint(x * (1 - w)).astype(np.uint8) for w, x in zip((np.arange(n) + 1.0) / n, a[10:])]
        + [np.rint(y * w).astype(np.uint8) for w, y in zip((np.arange(n) + 1.0) / n, b)]
        + b[n:]
    )
    assert _run(fade)[0] == []


@pytest.mark.parametrize("gap", [5, 6])
def test_cuts_a_fifth_and_a_quarter_second_apart_are_both_found(gap: int) -> None:
    a, b, c = _shot("coffee", 25), _shot("astronaut", gap, (0, -3)), _shot("rocket", 25, (1, 0))
    assert _run(a + b + c)[0] == [25, 25 + gap]  # 0.2 s and 0.24 s at 25 fps


def test_a_jump_cut_inside_one_set_is_found() -> None:
    """Two parts of one slow pan over the same photograph, 30 frames apart: low contrast, same colours."""
    shot = _shot("astronaut", 60, (0, 1))
    assert _run(shot[:25] + shot[55:])[0] == [25]


def _shifted_pair(dx: int, dy: int, size: int = 64) -> tuple[Tensor, Tensor]:
    """(current, previous) [1, 1, size, size] noise where content moved by (dx, dy) pixels: cur[p] = prev[p - d]."""
    pad = max(abs(dx), abs(dy))
    big = torch.rand(1, 1, size + 2 * pad, size + 2 * pad, generator=torch.Generator().manual_seed(3))
    prev = big[..., pad : pad + size, pad : pad + size]
    cur = big[..., pad - dy : pad - dy + size, pad - dx : pad - dx + size]
    return cur, prev


@pytest.mark.parametrize("dx,dy,radius", [(4, 0, 4), (-4, 0, 4), (0, 4, 4), (4, -4, 4), (8, 0, 8), (2, 0, 4)])
def test_coarse_flow_recovers_known_shift(dx: int, dy: int, radius: int) -> None:
    """64x64 low-res pixels on a 16x16 grid: 4 pixels are one cell; the 2-cell border may see replicated edges."""
    flow = realizing.coarse_flow(*_shifted_pair(dx, dy), GRID, radius)
    assert flow.shape == (1, 2, *GRID)
    inner = flow[0, :, 2:-2, 2:-2]
    assert torch.allclose(inner[0], torch.full_like(inner[0], dx / 4), atol=0.25)
    assert torch.allclose(inner[1], torch.full_like(inner[1], dy / 4), atol=0.25)


def test_coarse_flow_zero_shift_is_zero() -> None:
    cur, prev = _shifted_pair(0, 0)
    assert realizing.coarse_flow(cur, prev, GRID, 4).abs().max() < 1e-3


def _warp(flow_xy: tuple[float, float], gh: int = 6, gw: int = 7) -> tuple[Tensor, Tensor, Tensor]:
    maps = torch.rand(2, 3, gh, gw, generator=torch.Generator().manual_seed(4))
    flow = torch.tensor(flow_xy).view(1, 2, 1, 1).expand(2, 2, gh, gw)
    warped, valid = realizing.backward_warp(maps, flow)
    return maps, warped, valid


@pytest.mark.parametrize("fx,fy", [(1, 0), (-1, 0), (0, 1), (0, -1)])
def test_backward_warp_constant_one_cell_shift(fx: int, fy: int) -> None:
    maps, warped, valid = _warp((float(fx), float(fy)))
    gh, gw = maps.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    sy, sx = ys - fy, xs - fx  # the value at p comes from p - flow
    inside = (sx >= 0) & (sx < gw) & (sy >= 0) & (sy < gh)
    assert valid.shape == (2, 1, gh, gw)
    assert torch.equal(valid[:, 0], inside.float().expand(2, gh, gw))  # 0 on exactly one border line
    assert inside.sum() == (gh - abs(fy)) * (gw - abs(fx))
    source = maps[..., sy.clamp(0, gh - 1), sx.clamp(0, gw - 1)]
    assert torch.allclose(warped[..., inside], source[..., inside], atol=1e-5)


def test_backward_warp_zero_flow_is_identity() -> None:
    maps, warped, valid = _warp((0.0, 0.0))
    assert torch.allclose(warped, maps, atol=1e-6) and torch.all(valid == 1)


def _blend_inputs(seed: int = 5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A texture with random prev_relevance and motion, a random current map [2, 1, 4, 4] and per-stream dt."""
    g = torch.Generator().manual_seed(seed)
    tex = _texture(2, 4, 4, prev_relevance=torch.rand(2, 4, 4, generator=g), motion=torch.rand(2, 4, 4, generator=g))
    return tex, torch.rand(2, 1, 4, 4, generator=g), torch.tensor([0.02, 0.3]), torch.ones(2, 1, 4, 4)


def test_blend_valid_cache_is_exponential_mix() -> None:
    tex, current, dt, valid = _blend_inputs()
    tau, boost = 0.1, 0.3
    cache, relevance = realizing.blend(tex, valid, current, dt, tau, boost)
    d = torch.tensor([math.exp(-t / tau) for t in dt.tolist()]).view(2, 1, 1, 1)
    prev, motion = tex[:, idx("prev_relevance")][:, None], tex[:, idx("motion")][:, None]
    assert torch.allclose(cache, d * prev + (1 - d) * current, atol=1e-6)
    assert torch.allclose(relevance, torch.clamp(cache + boost * motion * (1 - cache), 0, 1), atol=1e-6)


def test_blend_invalid_cells_take_current() -> None:
    tex, current, dt, valid = _blend_inputs()
    valid[..., :, :2] = 0.0
    tex[:, idx("prev_relevance"), :, :2] = 0.0  # the warped cache arrives zeroed where invalid
    cache, _ = realizing.blend(tex, valid, current, dt, 0.1, 0.3)
    assert torch.allclose(cache[..., :, :2], current[..., :, :2], atol=1e-6)
    assert not torch.allclose(cache[..., :, 2:], current[..., :, 2:], atol=1e-3)


def test_blend_boost_never_enters_cache() -> None:
    tex, current, dt, valid = _blend_inputs()
    cache0, rel0 = realizing.blend(tex, valid, current, dt, 0.1, 0.0)
    tex[:, idx("motion")] = 1.0
    cache1, rel1 = realizing.blend(tex, valid, current, dt, 0.1, 0.5)
    assert torch.equal(cache0, cache1)
    assert torch.all(rel1 >= rel0) and torch.any(rel1 > rel0 + 0.1)
    # a share of the headroom: under the same motion, a cell ranked above another stays above it
    order0, order1 = cache1.flatten(1).argsort(dim=1), rel1.flatten(1).argsort(dim=1)
    assert torch.equal(order0, order1)


def test_blend_output_clamped() -> None:
    tex, current, dt, valid = _blend_inputs()
    tex[:, idx("motion")] = 1.0
    _, relevance = realizing.blend(tex, valid, current, dt, 0.1, 2.0)
    assert torch.all(relevance == 1.0)
