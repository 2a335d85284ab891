"""Realizing stage: temporal state across frames (DESIGN.md section 6).

``realizing.pre`` runs before the texture: the causal cut detector, coarse block-matching flow and the backward
warp of every cache. ``realizing.post`` runs after balancing: it blends the current map into the warped,
unboosted cache and adds the motion boost to the output only (feeding the boost back would diverge).

Conventions: flow (+x) means content moved right, in cells per frame. Warping is backward: the value at cell p
comes from the previous map at p - flow(p) (``grid_sample``, ``align_corners=False``); cells whose source lies
outside the frame are invalid and take the current frame's value.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .channels import idx
from .texture import for_runtime, to_grid

FLOW_DOWNSCALE = 4  # flow runs on luminance at work / 4 (64x64 by default)
FLOW_TEMPERATURE = 0.002  # soft-argmin temperature on the mean-abs-difference cost
# Scene cuts. A frame is compared with each of the last CUT_HISTORY frames on two cues that fail in different
# places: a layout of light-normalised colour and gradient (blind to global gain and offset, tolerant of motion)
# and the normalised cross-correlation of luminance blocks (blind to any local gain and offset, so to a flash
# that lights the centre more than the corners, but broken by motion). A cut needs both cues to call the frame
# different from every frame kept, so the end of a flash (back to the frame before it) is no cut either.
CUT_HISTORY = 4  # frames kept: the frame before a flash of up to 3 frames is still there after it
CUT_POOL = 8  # cut statistics on an 8x8 layout (and an 8x8 grid of correlation blocks)
CUT_FEATURES = 5 * CUT_POOL**2  # per layout cell: z-scored r, g, b and mean-normalised |dx|, |dy|
CUT_COLOUR_EPS = 0.02  # a frame whose layout contrast is below this (near black or white) has little layout
CUT_GRAD_EPS = 0.01  # the same for the gradient layout's mean
CUT_NCC_EPS = 0.004  # block standard deviation below this (about 8-bit noise) correlates weakly
CUT_NCC_FLOOR = 0.02  # mean block contrast below this scales the correlation distance down (fades to black)
CUT_CLIP_HIGH = 0.95  # block mean luminance above which a block counts as blown out (no structure left)
CUT_CLIP_LOW = 0.03  # ... and below which as crushed to black
CUT_CLIP_RAMP = 0.1  # blocks count fully this far inside those limits
CUT_LAYOUT_SCALE = 0.12  # mean layout difference counted as one unit of change
CUT_STRUCT_SCALE = 0.28  # correlation distance (1 - weighted NCC) counted as one unit of change
CUT_CHANGE = 0.8  # change, in those units, at which the score's absolute half reaches 0.5
CUT_RATIO = 2.3  # change relative to the shot's running mean at which the relative half reaches 0.5
CUT_MOTION_KEEP = 0.3  # share of the previous motion prediction kept at each frame
CUT_MEAN_FLOOR = 0.1  # added to the running mean, so a still shot does not make noise look relatively large
CUT_MEAN_PRIOR = 1.0  # running mean the frame after a reset or cut is judged against: it has no motion
# prediction yet, so a fast pan there would otherwise look like another cut
CUT_MEAN_TAU_S = 1.0  # running mean of the change; a shot's first second is a plain average of its frames
EPS = 1e-3


def _layout_mean(x: Tensor) -> Tensor:
    """Means over an 8x8 grid of blocks: [B, C, H, W] -> [B, C, 8, 8]; H, W multiples of 8."""
    return to_grid(x, (x.shape[-2] // CUT_POOL, x.shape[-1] // CUT_POOL))


def cut_features(luma_small: Tensor, rgb: Tensor) -> Tensor:
    """Light-normalised layout statistics for the cut detector.

    Each colour channel's 8x8 layout is z-scored over the frame and the gradient layout is divided by its mean,
    so a change of exposure or gain (the same for the whole frame) leaves them unchanged.

    Args:
        luma_small: [B, 1, h, w] low-resolution luminance in [0, 1]; h, w multiples of 8.
        rgb: [B, 3, H, W] work-resolution frame in [0, 1]; H, W multiples of 8.

    Returns:
        [B, F] with F = 5 * 8 * 8: z-scored mean r, g, b per layout cell (about -8..8), then mean horizontal and
        vertical gradient magnitude per cell over their mean over the frame (0..128, mean 1).
    """
    bsz = rgb.shape[0]
    colour = _layout_mean(rgb)  # [B, 3, 8, 8]
    mean = colour.mean(dim=(2, 3), keepdim=True)
    std = torch.sqrt(torch.clamp(((colour - mean) ** 2).mean(dim=(2, 3), keepdim=True), min=0.0))
    colour = (colour - mean) / (std + CUT_COLOUR_EPS)
    dx = (luma_small[..., :, 1:] - luma_small[..., :, :-1]).abs()
    dy = (luma_small[..., 1:, :] - luma_small[..., :-1, :]).abs()
    dx = F.pad(dx, (0, 1, 0, 0))
    dy = F.pad(dy, (0, 0, 0, 1))
    grad = _layout_mean(torch.cat([dx, dy], dim=1))  # [B, 2, 8, 8]
    grad = grad / (grad.mean(dim=(1, 2, 3), keepdim=True) + CUT_GRAD_EPS)
    return torch.cat([colour.reshape(bsz, -1), grad.reshape(bsz, -1)], dim=1)


def structure_distance(luma_small: Tensor, refs: Tensor) -> Tensor:
    """Block-wise normalised cross-correlation distance between a frame and reference frames.

    Per block of an 8x8 grid, 1 - NCC (0 for the same structure under any gain and offset, about 1 for unrelated
    content), averaged with weights max(std) of the two blocks, so flat blocks count little and a frame with no
    contrast at all (black, white) is close to everything.

    Args:
        luma_small: [B, 1, h, w] this frame's low-resolution luminance in [0, 1].
        refs: [B, K, h, w] K reference frames.

    Returns:
        [B, K] distances, 0..2 (about 1 for unrelated content).
    """
    k = refs.shape[1]
    # every block moment in one call: E[a], E[r], E[a^2], E[r^2], E[a r]
    moments = _layout_mean(
        torch.cat([luma_small, refs, luma_small * luma_small, refs * refs, luma_small * refs], dim=1)
    )  # [B, 3K + 2, 8, 8]
    mean = moments[:, : k + 1]  # [B, K + 1, 8, 8]: this frame, then the references
    std = torch.sqrt(torch.clamp(moments[:, k + 1 : 2 * k + 2] - mean * mean, min=0.0))
    cov = moments[:, 2 * k + 2 :] - mean[:, :1] * mean[:, 1:]
    ncc = cov / ((std[:, :1] + CUT_NCC_EPS) * (std[:, 1:] + CUT_NCC_EPS))
    # a block blown out (or crushed) in either frame lost its structure to the exposure, not to the content
    exposed = torch.clamp((CUT_CLIP_HIGH - mean) / CUT_CLIP_RAMP, 0.0, 1.0) * torch.clamp(
        (mean - CUT_CLIP_LOW) / CUT_CLIP_RAMP, 0.0, 1.0
    )
    weight = torch.maximum(std[:, :1], std[:, 1:]) * exposed[:, :1] * exposed[:, 1:]
    cells = weight.shape[-2] * weight.shape[-1]
    return (weight * (1.0 - ncc)).sum(dim=(2, 3)) / (weight.sum(dim=(2, 3)) + CUT_NCC_FLOOR * cells)


def translate(image: Tensor, motion: Tensor) -> Tensor:
    """Move an image's content by a global motion (bilinear, edges replicated).

    Args:
        image: [B, C, h, w]. motion: [B, 2] (x, y) in pixels, +x = content moves right.

    Returns:
        [B, C, h, w]: the value at p comes from p - motion.
    """
    bsz = image.shape[0]
    h, w = image.shape[-2:]
    xs = (2.0 * torch.arange(w, dtype=image.dtype, device=image.device) + 1.0) / w - 1.0
    ys = (2.0 * torch.arange(h, dtype=image.dtype, device=image.device) + 1.0) / h - 1.0
    gx = xs.view(1, 1, w) - (2.0 / w) * motion[:, 0].view(bsz, 1, 1)  # [B, 1, w]
    gy = ys.view(1, h, 1) - (2.0 / h) * motion[:, 1].view(bsz, 1, 1)  # [B, h, 1]
    grid = torch.stack([gx.expand(bsz, h, w), gy.expand(bsz, h, w)], dim=-1)  # [B, h, w, 2]
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def next_motion(motion_in: Tensor, flow: Tensor, small_size: tuple[int, ...], fresh: Tensor) -> Tensor:
    """The cut detector's motion prediction for the next frame: the flow's mean, smoothed over frames.

    Keeping ``CUT_MOTION_KEEP`` of the previous prediction means one frame of bad flow (a flash changes the
    brightness block matching relies on) does not derail the prediction for the frames after it.

    Args:
        motion_in: [B, 2] the previous prediction. flow: [B, 2, gh, gw] this frame's flow in cells per frame.
        small_size: (h, w) of the flow-resolution luminance. fresh: [B] bool, a reset or cut at this frame.

    Returns:
        [B, 2] (x, y) content motion in flow-resolution pixels per frame, +x = moved right; 0 after a reset or cut.
    """
    per_cell = torch.tensor(
        [small_size[1] / flow.shape[-1], small_size[0] / flow.shape[-2]], dtype=flow.dtype, device=flow.device
    )
    motion = CUT_MOTION_KEEP * motion_in + (1.0 - CUT_MOTION_KEEP) * flow.mean(dim=(2, 3)) * per_cell
    return torch.where(fresh[:, None], torch.zeros_like(motion), motion)


def detect_cut(
    feat: Tensor,
    luma_small: Tensor,
    feat_hist: Tensor,
    luma_hist: Tensor,
    motion: Tensor,
    mean_in: Tensor,
    since_in: Tensor,
    dt: Tensor,
    reset: Tensor,
    threshold: float,
    min_scene_len_s: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Causal scene-cut detector, decided at the frame itself (no delay).

    The change of a frame is the smallest over the kept frames (newest first) of min(layout difference /
    ``CUT_LAYOUT_SCALE``, structure distance / ``CUT_STRUCT_SCALE``): a cut must differ from every kept frame on
    both cues. Against the newest frame the structure distance also tries that frame moved on by the previous
    frame's global motion, so a steady pan is no change, while a jump cut (motion that did not continue) is. The
    score is the smaller of c / (c + ``CUT_CHANGE``) and r / (r + ``CUT_RATIO``), r the change over the shot's
    running mean (a plain average over the shot's first second, then an exponential one), so both an absolute
    and a relative jump are needed; 0.5 is each half's midpoint. No cut is reported within ``min_scene_len_s`` of
    the previous reset or cut.

    What it does not see: a cut into or out of a frame without contrast (black, white) compares as close, so a
    cut through more than ``CUT_HISTORY - 1`` black frames is not reported (like a fade); a shot of up to
    ``CUT_HISTORY - 1`` frames that returns to the previous shot looks like a flash.

    Args:
        feat: [B, F] :func:`cut_features` of this frame. luma_small: [B, 1, h, w] its low-resolution luminance.
        feat_hist: [B, N, F] and luma_hist: [B, N, h, w]: the last N = ``CUT_HISTORY`` frames, newest first.
        motion: [B, 2] the previous frame's global content motion (x, y) in low-resolution pixels per frame.
        mean_in: [B] running mean of the change. since_in: [B] seconds since the last reset or cut.
        dt: [B] seconds since the previous frame. reset: [B] bool, the stream starts over.
        threshold: score above which a frame is a cut. min_scene_len_s: shortest scene in seconds.

    Returns:
        score [B] in [0, 1], cut [B] bool, feat_hist_out [B, N, F], luma_hist_out [B, N, h, w], mean_out [B],
        since_out [B].
    """
    bsz, n = luma_hist.shape[:2]
    moved = translate(luma_hist[:, :1], motion)  # [B, 1, h, w] the newest frame, moved on as predicted
    structure = structure_distance(luma_small, torch.cat([luma_hist, moved], dim=1))  # [B, N + 1]
    layout = (feat[:, None] - feat_hist).abs().mean(dim=2)  # [B, N]
    layout = torch.cat([layout, layout[:, :1]], dim=1)  # the moved newest frame has the newest frame's layout
    change = torch.minimum(layout / CUT_LAYOUT_SCALE, structure / CUT_STRUCT_SCALE).amin(dim=1)
    ratio = change / (mean_in + CUT_MEAN_FLOOR)
    score = torch.minimum(change / (change + CUT_CHANGE), ratio / (ratio + CUT_RATIO))
    score = torch.where(reset, torch.zeros_like(score), score)
    cut = (score > threshold) & (since_in + dt >= min_scene_len_s) & ~reset
    fresh = reset | cut
    # a plain average over the shot's first CUT_MEAN_TAU_S, so the shot's own motion sets the level quickly
    rate = torch.maximum(1.0 - torch.exp(-dt / CUT_MEAN_TAU_S), dt / (since_in + dt + EPS))
    mean_out = torch.where(fresh, torch.full_like(mean_in, CUT_MEAN_PRIOR), mean_in + rate * (change - mean_in))
    since_out = torch.where(fresh, torch.zeros_like(since_in), since_in + dt)
    # a reset fills the history with this frame; otherwise it shifts by one (a cut keeps it: the frames before
    # the cut are no match for the new shot anyway)
    feat_hist_out = torch.where(
        reset.view(bsz, 1, 1),
        feat[:, None].expand_as(feat_hist),
        torch.cat([feat[:, None], feat_hist[:, : n - 1]], dim=1),
    )
    luma_hist_out = torch.where(
        reset.view(bsz, 1, 1, 1), luma_small.expand_as(luma_hist), torch.cat([luma_small, luma_hist[:, : n - 1]], dim=1)
    )
    return score, cut, feat_hist_out, luma_hist_out, mean_out, since_out


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
    cols = torch.cat([padded[..., :, radius - dx : radius - dx + w] for dx in range(-radius, radius + 1)], dim=1)
    stack = torch.cat([cols[..., radius - dy : radius - dy + h, :] for dy in range(-radius, radius + 1)], dim=1)
    cost = (luma_small - stack).abs()  # [B, S, h, w], S = (2r + 1)^2, dy-major
    shifts = [(dx, dy) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    # Per-cell means of the 81 cost planes. Eager: sums of strided slices (avg_pool2d costs ~5x more); runtimes:
    # one 6-D ReduceMean (2.3x faster than the slices in onnxruntime).
    if for_runtime():
        bsz, s = cost.shape[:2]
        cost = cost.reshape(bsz, s, grid[0], px_per_cell, grid[1], px_per_cell).mean(dim=(3, 5))
    else:
        cost = (
            cast(  # a sum of tensors (typeshed's sum() may also return its start, 0)
                Tensor,
                sum(cost[..., i::px_per_cell, j::px_per_cell] for i in range(px_per_cell) for j in range(px_per_cell)),
            )
            / px_per_cell**2
        )  # [B, S, gh, gw]
    # a 3x3-cell support window gives each cell enough texture to match
    gh, gw = grid
    cost = F.pad(cost, (1, 1, 1, 1), mode="replicate")
    cost = cost[..., :, 0:gw] + cost[..., :, 1 : gw + 1] + cost[..., :, 2 : gw + 2]
    cost = (cost[..., 0:gh, :] + cost[..., 1 : gh + 1, :] + cost[..., 2 : gh + 2, :]) / 9.0
    # softmax over the last axis: onnxruntime's kernel for an inner axis was 4.8x slower than a transpose and this
    weights = torch.softmax(cost.flatten(2).transpose(1, 2) / -FLOW_TEMPERATURE, dim=-1)  # [B, gh * gw, S]
    vec = torch.tensor(shifts, dtype=cost.dtype, device=cost.device) / px_per_cell  # [S, 2] in cells
    return (weights @ vec).transpose(1, 2).reshape(cost.shape[0], 2, gh, gw)


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


def blend(
    tex: Tensor, valid: Tensor, current: Tensor, dt: Tensor, tau_s: float, boost: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Blend the current map into the warped cache; boost the output by motion.

    C_t = d * warp(C_{t-1}) + (1 - d) * R_now with d = exp(-dt / tau), invalid or fresh cells taking R_now;
    relevance = C_t + boost * motion * (1 - C_t): motion lifts a cell by a share of its headroom, so it never
    reorders cells a query put near the top (a flat boost let a moving background outrank the queried colour).
    Reads channels prev_relevance (the warped cache, already zero where ``valid`` is) and motion.

    Args:
        tex: [B, C, gh, gw] texture. valid: [B, 1, gh, gw], 0 where the cache has no history (outside the frame,
            or a fresh state). current: [B, 1, gh, gw] R_now in [0, 1]. dt: [B] seconds.
        boost: the motion boost in [0, 1], one value or per cell [B, 1, gh, gw].

    Returns:
        cache [B, 1, gh, gw] (the next state, unboosted), relevance [B, 1, gh, gw] in [0, 1].
    """
    prev = tex[:, idx("prev_relevance")][:, None] + (1.0 - valid) * current
    d = torch.exp(-dt / tau_s).view(-1, 1, 1, 1)
    cache = d * prev + (1.0 - d) * current
    return cache, torch.clamp(cache + boost * tex[:, idx("motion")][:, None] * (1.0 - cache), 0.0, 1.0)
