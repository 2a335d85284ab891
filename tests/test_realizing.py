"""Realizing stage (DESIGN.md section 6): cut detector, cut statistics, coarse flow, backward warp and blend.

Small synthetic tensors only: feature vectors and textures are built directly, images for the flow are random
noise shifted by a known number of pixels. Expected values come from the stage's documented formulas.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from arr_coc_stream import realizing
from arr_coc_stream.channels import NUM_CHANNELS, idx

DT = 1.0 / 30.0
THRESHOLD, MIN_SCENE_S = 0.5, 0.5
GRID = (16, 16)


def _texture(bsz: int = 1, gh: int = 8, gw: int = 8, **channels: Tensor | float) -> Tensor:
    """A zero texture [B, NUM_CHANNELS, gh, gw] with the named channels set."""
    tex = torch.zeros(bsz, NUM_CHANNELS, gh, gw)
    for name, value in channels.items():
        tex[:, idx(name)] = value
    return tex


def _cut(feat: Tensor, prev: Tensor, mean: list[float], since: list[float], reset: list[bool] | None = None
         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """detect_cut on [B, F] features with per-stream running mean and seconds since reset."""
    bsz = feat.shape[0]
    reset_t = torch.tensor(reset if reset is not None else [False] * bsz)
    return realizing.detect_cut(feat, prev, torch.tensor(mean), torch.tensor(since), torch.full((bsz,), DT),
                                reset_t, THRESHOLD, MIN_SCENE_S)


def _feats(bsz: int, value: float) -> Tensor:
    return torch.full((bsz, realizing.CUT_FEATURES), value)


def test_jump_far_above_running_mean_is_a_cut() -> None:
    score, cut, mean, since = _cut(_feats(1, 0.7), _feats(1, 0.2), [realizing.CUT_MEAN_PRIOR], [5.0])
    assert score.item() > THRESHOLD and cut.item()
    assert mean.item() == pytest.approx(realizing.CUT_MEAN_PRIOR) and since.item() == 0.0


@pytest.mark.parametrize("step", [0.1, 0.2])
def test_steady_change_is_not_a_cut(step: float) -> None:
    """A fade: every frame moves all statistics by the same step, and the running mean has learnt that step."""
    feat, mean, since = _feats(1, 0.0), [step], [5.0]
    for _ in range(4):
        nxt = feat + step
        score, cut, mean_t, since_t = _cut(nxt, feat, mean, since)
        assert not cut.item() and score.item() < THRESHOLD
        assert mean_t.item() == pytest.approx(step, rel=1e-4)  # the running mean stays matched
        assert since_t.item() == pytest.approx(since[0] + DT)
        feat, mean, since = nxt, [mean_t.item()], [since_t.item()]
    # the same step against a fresh state's running mean is a cut: the running mean is what keeps it low
    assert _cut(_feats(1, step), _feats(1, 0.0), [realizing.CUT_MEAN_PRIOR], [5.0])[1].item()


def test_no_cut_within_min_scene_length() -> None:
    big, prev = _feats(1, 0.9), _feats(1, 0.0)
    score, cut, mean, since = _cut(big, prev, [realizing.CUT_MEAN_PRIOR], [MIN_SCENE_S - 2 * DT])
    assert score.item() > THRESHOLD and not cut.item()
    assert since.item() == pytest.approx(MIN_SCENE_S - DT)  # no reset: time keeps counting
    assert mean.item() > realizing.CUT_MEAN_PRIOR  # and the mean absorbed the change
    assert _cut(big, prev, [realizing.CUT_MEAN_PRIOR], [MIN_SCENE_S - DT / 2])[1].item()  # just past the limit


def test_reset_zeroes_score_and_restarts_state() -> None:
    score, cut, mean, since = _cut(_feats(1, 0.9), _feats(1, 0.0), [0.3], [7.0], reset=[True])
    assert score.item() == 0.0 and not cut.item()
    assert since.item() == 0.0 and mean.item() == pytest.approx(realizing.CUT_MEAN_PRIOR)


def test_streams_in_a_batch_are_independent() -> None:
    prev = _feats(2, 0.2)
    feat = prev.clone()
    feat[0] = 0.8  # stream 0 jumps, stream 1 is unchanged
    score, cut, mean, since = _cut(feat, prev, [realizing.CUT_MEAN_PRIOR] * 2, [3.0, 3.0])
    assert cut.tolist() == [True, False] and score[1].item() == 0.0
    assert since.tolist() == pytest.approx([0.0, 3.0 + DT])
    score, cut, mean, since = _cut(feat, prev, [0.05, 0.05], [3.0, 3.0], reset=[False, True])
    assert cut.tolist() == [True, False] and score[1].item() == 0.0 and score[0].item() > THRESHOLD
    assert since.tolist() == [0.0, 0.0] and mean.tolist() == pytest.approx([realizing.CUT_MEAN_PRIOR] * 2)


def _frame(seed: int, bsz: int = 2) -> tuple[Tensor, Tensor]:
    """A random work-resolution frame [B, 3, 64, 64] and its low-resolution luminance [B, 1, 16, 16]."""
    rgb = torch.rand(bsz, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    luma = rgb.mean(dim=1, keepdim=True)
    return torch.nn.functional.avg_pool2d(luma, realizing.FLOW_DOWNSCALE), rgb


def test_cut_features_shape_and_range() -> None:
    small, rgb = _frame(0)
    feat = realizing.cut_features(small, rgb)
    assert feat.shape == (2, realizing.CUT_FEATURES)
    assert feat.min() >= 0.0 and feat.max() <= 1.0
    stripes = (torch.arange(16) % 2).float().expand(1, 1, 16, 16)  # maximal gradients must stay in range
    assert realizing.cut_features(stripes, torch.ones(1, 3, 64, 64)).max() <= 1.0


def test_cut_features_identical_frames_identical_features() -> None:
    small, rgb = _frame(1)
    a, b = realizing.cut_features(small, rgb), realizing.cut_features(small.clone(), rgb.clone())
    assert torch.equal(a, b)
    assert not torch.equal(a, realizing.cut_features(*_frame(2)))  # a different frame moves them
    assert torch.all(_cut(a, b, [0.05, 0.05], [5.0, 5.0])[0] == 0.0)


def _shifted_pair(dx: int, dy: int, size: int = 64) -> tuple[Tensor, Tensor]:
    """(current, previous) [1, 1, size, size] noise where content moved by (dx, dy) pixels: cur[p] = prev[p - d]."""
    pad = max(abs(dx), abs(dy))
    big = torch.rand(1, 1, size + 2 * pad, size + 2 * pad, generator=torch.Generator().manual_seed(3))
    prev = big[..., pad:pad + size, pad:pad + size]
    cur = big[..., pad - dy:pad - dy + size, pad - dx:pad - dx + size]
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
    assert torch.allclose(relevance, torch.clamp(cache + boost * motion, 0, 1), atol=1e-6)


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


def test_blend_output_clamped() -> None:
    tex, current, dt, valid = _blend_inputs()
    tex[:, idx("motion")] = 1.0
    _, relevance = realizing.blend(tex, valid, current, dt, 0.1, 2.0)
    assert torch.all(relevance == 1.0)
