"""Attending stage: token selection, foveal budgets, level of detail, fixation history (DESIGN.md sections 5, 9).

Selection: ``k - explore_k`` cells by relevance, then ``explore_k`` more by relevance under inhibition of
return from the fixation history; a selected cell is ``valid`` only above the relevance floor, so K is a
maximum. Foveal budgets: in score order, greedy non-maximum suppression of the crop windows, budget
b = n^2 with n = round(sqrt(64 + 336 * s^kappa)) in 8..20, under the frame's total budget. All loops are over
fixed counts, so the graph is static and TensorRT-safe (TopK, Gather, ScatterElements, no NonZero).
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_SIDE, MAX_SIDE = 8, 20  # budget sides in tokens: 64..400 tokens
LOD_THRESHOLDS = (300, 200, 100)  # budget >= 300 -> lod 0, >= 200 -> 1, >= 100 -> 2, else 3


def select(relevance: Tensor, fixation: Tensor, k: int, explore_k: int, floor: float,
           inhibition: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pick up to ``k`` cells: exploit slots by relevance, explore slots with inhibition of return.

    Args:
        relevance: [B, N] in [0, 1]. fixation: [B, N] in [0, 1] (warped fixation history).
        k: cells to pick. explore_k: of those, picked by relevance * (1 - inhibition * fixation).
        floor: relevance a picked cell needs to be valid. inhibition: scalar in [0, 1].

    Returns:
        indices [B, k] int64 (row-major cell index) sorted by score, scores [B, k], valid [B, k] bool.
    """
    exploit_idx = torch.topk(relevance, k - explore_k, dim=1).indices
    if explore_k > 0:
        ior = relevance * (1.0 - inhibition * fixation)
        ior = ior.scatter(1, exploit_idx, torch.full_like(exploit_idx, -1.0, dtype=ior.dtype))
        explore_idx = torch.topk(ior, explore_k, dim=1).indices
        idx = torch.cat([exploit_idx, explore_idx], dim=1)
    else:
        idx = exploit_idx
    scores = torch.gather(relevance, 1, idx)
    order = torch.topk(scores, k, dim=1).indices
    idx = torch.gather(idx, 1, order)
    scores = torch.gather(scores, 1, order)
    return idx, scores, scores >= floor


def crop_windows(indices: Tensor, grid: tuple[int, int], crop_cells: int) -> Tensor:
    """Crop window of ``crop_cells`` cells around each cell, shifted to lie inside the grid.

    Args:
        indices: [B, K] row-major cell indices.

    Returns:
        [B, K, 4] int64 (y0, x0, y1, x1) in cells, end-exclusive.
    """
    gh, gw = grid
    y, x = indices // gw, indices % gw
    half = (crop_cells - 1) // 2
    y0 = torch.clamp(y - half, 0, gh - crop_cells)
    x0 = torch.clamp(x - half, 0, gw - crop_cells)
    return torch.stack([y0, x0, y0 + crop_cells, x0 + crop_cells], dim=-1)


def foveal_budgets(scores: Tensor, valid: Tensor, boxes: Tensor, max_foveal: int, max_total: int,
                   kappa: float, nms_iou: Tensor) -> tuple[Tensor, Tensor]:
    """Token budgets and levels of detail for the best selected cells.

    Greedy in score order over the first ``max_foveal`` selected cells: a cell whose window overlaps an
    accepted window by IoU > ``nms_iou`` gets nothing; otherwise it gets n^2 tokens, shrunk to what remains of
    ``max_total`` (never below 64: then nothing).

    Args:
        scores: [B, K] descending. valid: [B, K] bool. boxes: [B, K, 4] windows in cells.
        max_foveal: candidates examined. max_total: budget cap per frame. kappa: curve exponent.
        nms_iou: scalar IoU threshold.

    Returns:
        budgets [B, K] int32 (0 or 64..400), lod [B, K] int32 (0..3, -1 where the budget is 0).
    """
    bsz, k = scores.shape
    m = min(max_foveal, k)
    b = boxes[:, :m].to(scores.dtype)  # [B, M, 4]
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iy = torch.clamp(torch.minimum(b[:, :, None, 2], b[:, None, :, 2]) - torch.maximum(b[:, :, None, 0], b[:, None, :, 0]), min=0)
    ix = torch.clamp(torch.minimum(b[:, :, None, 3], b[:, None, :, 3]) - torch.maximum(b[:, :, None, 1], b[:, None, :, 1]), min=0)
    inter = iy * ix
    iou = inter / (area[:, :, None] + area[:, None, :] - inter)  # [B, M, M]
    overlaps = (iou > nms_iou).to(scores.dtype)
    side = torch.round(torch.sqrt(64.0 + 336.0 * torch.clamp(scores[:, :m], 0.0, 1.0) ** kappa))
    side = torch.clamp(side, MIN_SIDE, MAX_SIDE)
    remaining = torch.full((bsz,), float(max_total), dtype=scores.dtype, device=scores.device)
    accepted: list[Tensor] = []  # [B] 1.0 where candidate j got a budget
    sides = []
    for i in range(m):
        fit = torch.minimum(side[:, i], torch.floor(torch.sqrt(remaining)))
        ok = valid[:, i] & (fit >= MIN_SIDE)
        if accepted:
            ok = ok & ((torch.stack(accepted, dim=1) * overlaps[:, i, :i]).sum(dim=1) == 0)
        n = torch.where(ok, fit, torch.zeros_like(fit))
        remaining = remaining - n * n
        accepted.append(ok.to(scores.dtype))
        sides.append(n)
    budgets = torch.stack(sides, dim=1) ** 2
    budgets = torch.cat([budgets, torch.zeros(bsz, k - m, dtype=budgets.dtype, device=budgets.device)], dim=1)
    lod = torch.full_like(budgets, 3.0)
    for level, t in reversed(list(enumerate(LOD_THRESHOLDS))):
        lod = torch.where(budgets >= t, torch.full_like(lod, float(level)), lod)
    lod = torch.where(budgets > 0, lod, torch.full_like(lod, -1.0))
    return budgets.to(torch.int32), lod.to(torch.int32)


def update_fixation(fixation: Tensor, indices: Tensor, valid: Tensor, dt: Tensor, tau_s: float) -> Tensor:
    """EMA of past selections: f = d * f_warped + (1 - d) * selected, d = exp(-dt / tau).

    Args:
        fixation: [B, N] warped history in [0, 1] (zeros on a fresh state). indices: [B, K]. valid: [B, K].
        dt: [B] seconds.

    Returns:
        [B, N] in [0, 1].
    """
    selected = torch.zeros_like(fixation).scatter(1, indices, valid.to(fixation.dtype))
    d = torch.exp(-dt / tau_s)[:, None]
    return d * fixation + (1.0 - d) * selected
