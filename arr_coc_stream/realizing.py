"""Realizing stage: temporal state across frames (DESIGN.md section 6).

``realizing.pre`` runs before the texture: the causal cut detector, coarse block-matching flow and the backward
warp of every cache. ``realizing.post`` runs after balancing: it blends the current map into the warped,
unboosted cache and adds the motion boost to the output only (feeding the boost back would diverge).

Conventions: flow (+x) means content moved right, in cells per frame. Warping is backward: the value at cell p
comes from the previous map at p - flow(p) (``grid_sample``, ``align_corners=False``); cells whose source lies
outside the frame are invalid and take the current frame's value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .channels import idx

FLOW_DOWNSCALE = 4        # flow runs on luminance at work / 4 (64x64 by default)
FLOW_TEMPERATURE = 0.002  # soft-argmin temperature on the mean-abs-difference cost
CUT_POOL = 8              # cut statistics on an 8x8 layout of colour and structure
CUT_FEATURES = 5 * CUT_POOL ** 2  # mean r, g, b and |dx|, |dy| per layout cell
CUT_MEAN_TAU_S = 1.0      # running mean of frame-to-frame change
CUT_MEAN_PRIOR = 0.02     # running mean a fresh state starts from
CUT_CONTENT_SCALE = 0.08  # absolute change that maps to tanh(1)
CUT_RATIO_SCALE = 4.0     # change relative to its running mean that maps to 1 - exp(-1)
EPS = 1e-3


def cut_features(luma_small: Tensor, rgb: Tensor) -> Tensor:
    """Cheap colour and structure statistics for the cut detector.

    Args:
        luma_small: [B, 1, h, w] low-resolution luminance in [0, 1].
        rgb: [B, 3, H, W] work-resolution frame in [0, 1].

    Returns:
        [B, F] with F = 5 * 8 * 8, values in [0, 1]: an 8x8 layout of mean colour and of mean horizontal and
        vertical gradient magnitude.
    """
    bsz = rgb.shape[0]
    colour = F.avg_pool2d(rgb, (rgb.shape[-2] // CUT_POOL, rgb.shape[-1] // CUT_POOL))
    dx = (luma_small[..., :, 1:] - luma_small[..., :, :-1]).abs()
    dy = (luma_small[..., 1:, :] - luma_small[..., :-1, :]).abs()
    dx = F.pad(dx, (0, 1, 0, 0))
    dy = F.pad(dy, (0, 0, 0, 1))
    pool = (luma_small.shape[-2] // CUT_POOL, luma_small.shape[-1] // CUT_POOL)
    grad = torch.clamp(4.0 * F.avg_pool2d(torch.cat([dx, dy], dim=1), pool), 0.0, 1.0)
    return torch.cat([colour.reshape(bsz, -1), grad.reshape(bsz, -1)], dim=1)


def detect_cut(
    feat: Tensor, prev_feat: Tensor, mean_in: Tensor, since_in: Tensor, dt: Tensor, reset: Tensor,
    threshold: float, min_scene_len_s: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Causal scene-cut detector against running statistics.

    The score combines the absolute change of the layout statistics with the change relative to its running
    mean (like PySceneDetect's AdaptiveDetector), so a pan or a fade, whose change is steady, stays low while a
    sudden change scores high. No cut is reported within ``min_scene_len_s`` of the previous reset.

    Args:
        feat, prev_feat: [B, F] statistics of this and the previous frame.
        mean_in: [B] running mean of the change. since_in: [B] seconds since the last reset.
        dt: [B] seconds since the previous frame. reset: [B] bool, the stream starts over.
        threshold: score above which a frame is a cut. min_scene_len_s: shortest scene in seconds.

    Returns:
        score [B] in [0, 1], cut [B] bool, mean_out [B], since_out [B].
    """
    content = (feat - prev_feat).abs().mean(dim=1)
    ratio = content / (mean_in + EPS)
    score = torch.tanh(content / CUT_CONTENT_SCALE) * (1.0 - torch.exp(-ratio / CUT_RATIO_SCALE))
    score = torch.where(reset, torch.zeros_like(score), score)
    cut = (score > threshold) & (since_in + dt >= min_scene_len_s) & ~reset
    fresh = reset | cut
    decay = torch.exp(-dt / CUT_MEAN_TAU_S)
    mean_out = torch.where(fresh, torch.full_like(mean_in, CUT_MEAN_PRIOR), decay * mean_in + (1 - decay) * content)
    since_out = torch.where(fresh, torch.zeros_like(since_in), since_in + dt)
    return score, cut, mean_out, since_out


def coarse_flow(luma_small: Tensor, prev_small: Tensor, grid: tuple[int, int], radius: int) -> Tensor:
    """Block-matching flow with a cost volume and soft-argmin, in cells per frame.

    Args:
        luma_small, prev_small: [B, 1, h, w] low-resolution luminance of this and the previous frame.
        grid: (gh, gw); h and w are multiples of it. radius: search radius in low-resolution pixels.

    Returns:
        [B, 2, gh, gw]: (x, y) content motion in cells per frame, +x = moved right.
    """
    h, w = luma_small.shape[-2:]
    px_per_cell = h // grid[0]
    padded = F.pad(prev_small, (radius, radius, radius, radius), mode="replicate")
    # Shifted copies built separably (2 x (2r + 1) slices instead of (2r + 1)^2): content moved by (dx, dy) means
    # this frame at p matches the previous frame at p - (dx, dy).
    cols = torch.cat([padded[..., :, radius - dx:radius - dx + w] for dx in range(-radius, radius + 1)], dim=1)
    stack = torch.cat([cols[..., radius - dy:radius - dy + h, :] for dy in range(-radius, radius + 1)], dim=1)
    cost = (luma_small - stack).abs()  # [B, S, h, w], S = (2r + 1)^2, dy-major
    shifts = [(dx, dy) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    # Sums of strided slices: avg_pool2d over 81 channels costs ~5x more on a CPU.
    cost = sum(cost[..., i::px_per_cell, j::px_per_cell]
               for i in range(px_per_cell) for j in range(px_per_cell)) / px_per_cell ** 2  # [B, S, gh, gw]
    # a 3x3-cell support window gives each cell enough texture to match
    gh, gw = grid
    cost = F.pad(cost, (1, 1, 1, 1), mode="replicate")
    cost = cost[..., :, 0:gw] + cost[..., :, 1:gw + 1] + cost[..., :, 2:gw + 2]
    cost = (cost[..., 0:gh, :] + cost[..., 1:gh + 1, :] + cost[..., 2:gh + 2, :]) / 9.0
    weights = torch.softmax(-cost / FLOW_TEMPERATURE, dim=1)  # [B, S, gh, gw]
    vec = torch.tensor(shifts, dtype=cost.dtype, device=cost.device).t() / px_per_cell  # [2, S] in cells
    return (vec @ weights.flatten(2)).view(cost.shape[0], 2, gh, gw)


def backward_warp(maps: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """Warp previous maps to this frame: value at p from p - flow(p).

    Args:
        maps: [B, C, gh, gw] previous-frame maps. flow: [B, 2, gh, gw] in cells per frame.

    Returns:
        warped [B, C, gh, gw]; valid [B, 1, gh, gw] float, 0 where the source lies outside the frame.
    """
    bsz, _, gh, gw = maps.shape
    ys = torch.arange(gh, dtype=maps.dtype, device=maps.device).view(1, gh, 1).expand(bsz, gh, gw)
    xs = torch.arange(gw, dtype=maps.dtype, device=maps.device).view(1, 1, gw).expand(bsz, gh, gw)
    sx = xs - flow[:, 0]
    sy = ys - flow[:, 1]
    grid = torch.stack([(2.0 * sx + 1.0) / gw - 1.0, (2.0 * sy + 1.0) / gh - 1.0], dim=-1)  # [B, gh, gw, 2]
    warped = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    valid = (sx >= -0.5) & (sx <= gw - 0.5) & (sy >= -0.5) & (sy <= gh - 0.5)
    return warped, valid.to(maps.dtype)[:, None]


def blend(tex: Tensor, valid: Tensor, current: Tensor, dt: Tensor, tau_s: float, boost: float
          ) -> tuple[Tensor, Tensor]:
    """Blend the current map into the warped cache; boost the output by motion.

    C_t = d * warp(C_{t-1}) + (1 - d) * R_now with d = exp(-dt / tau), invalid or fresh cells taking R_now;
    relevance = clamp(C_t + boost * motion, 0, 1). Reads channels prev_relevance (the warped cache, already zero
    where ``valid`` is) and motion.

    Args:
        tex: [B, C, gh, gw] texture. valid: [B, 1, gh, gw], 0 where the cache has no history (outside the frame,
            or a fresh state). current: [B, 1, gh, gw] R_now in [0, 1]. dt: [B] seconds.

    Returns:
        cache [B, 1, gh, gw] (the next state, unboosted), relevance [B, 1, gh, gw] in [0, 1].
    """
    prev = tex[:, idx("prev_relevance")][:, None] + (1.0 - valid) * current
    d = torch.exp(-dt / tau_s).view(-1, 1, 1, 1)
    cache = d * prev + (1.0 - d) * current
    return cache, torch.clamp(cache + boost * tex[:, idx("motion")][:, None], 0.0, 1.0)
