"""Attending stage: token selection, foveal budgets, level of detail, fixation history (DESIGN.md sections 5, 9).

Selection: ``k - explore_k`` cells by relevance, then ``explore_k`` more by relevance under inhibition of
return from the fixation history; a selected cell is ``valid`` only above the relevance floor, so K is a
maximum. Foveal budgets: in score order, greedy non-maximum suppression of the crop windows, budget
b = n^2 with n = round(sqrt(64 + 336 * s^kappa)) in 8..20, under the frame's total budget. All loops are over
fixed counts, so the graph is static and TensorRT-safe (TopK, Gather, ScatterElements, no NonZero).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .channels import idx

if TYPE_CHECKING:
    from .config import EngineConfig

MIN_SIDE, MAX_SIDE = 8, 20  # budget sides in tokens: 64..400 tokens
LOD_THRESHOLDS = (300, 200, 100)  # budget >= 300 -> lod 0, >= 200 -> 1, >= 100 -> 2, else 3


def select(
    relevance: Tensor, fixation: Tensor, k: int, explore_k: int, floor: float, inhibition: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
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


def foveal_budgets(
    scores: Tensor, valid: Tensor, boxes: Tensor, max_foveal: int, max_total: int, kappa: float, nms_iou: Tensor
) -> tuple[Tensor, Tensor]:
    """Token budgets and levels of detail for the best selected cells.

    In score order over the first ``max_foveal`` selected cells: a cell whose window overlaps an accepted window
    by IoU > ``nms_iou`` gets nothing (greedy NMS); otherwise it gets n^2 tokens, shrunk to what remains of
    ``max_total`` (never below 64: then nothing).

    Greedy NMS is computed as the fixpoint of "kept = valid and no kept higher-scored window overlaps": after
    i rounds the first i candidates are final, so ``max_foveal`` rounds of one small matmul give exactly the
    greedy result without a data-dependent loop. The budget is an exclusive prefix sum over kept candidates;
    once one is shrunk less than 64 tokens remain, so prefix sums of the unshrunk budgets are exact.

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
    iy = torch.clamp(
        torch.minimum(b[:, :, None, 2], b[:, None, :, 2]) - torch.maximum(b[:, :, None, 0], b[:, None, :, 0]), min=0
    )
    ix = torch.clamp(
        torch.minimum(b[:, :, None, 3], b[:, None, :, 3]) - torch.maximum(b[:, :, None, 1], b[:, None, :, 1]), min=0
    )
    inter = iy * ix
    iou = inter / (area[:, :, None] + area[:, None, :] - inter)  # [B, M, M]
    order = torch.arange(m, device=scores.device)
    higher = (order[:, None] > order[None, :]).to(scores.dtype)  # [M, M], [i, j] = 1 where j scored above i
    suppressors = (iou > nms_iou).to(scores.dtype) * higher  # [B, M, M]
    cand = valid[:, :m].to(scores.dtype)
    keep = cand
    for _ in range(m):
        keep = cand * ((suppressors @ keep[..., None])[..., 0] == 0).to(scores.dtype)
    side = torch.round(torch.sqrt(64.0 + 336.0 * torch.clamp(scores[:, :m], 0.0, 1.0) ** kappa))
    side = torch.clamp(side, MIN_SIDE, MAX_SIDE) * keep
    spent_before = (higher * (side * side)[:, None, :]).sum(-1)  # [B, M]: budgets of kept, higher-scored
    fit = torch.minimum(side, torch.floor(torch.sqrt(torch.clamp(max_total - spent_before, min=0.0))))
    n = fit * (fit >= MIN_SIDE).to(scores.dtype)
    budgets = torch.cat([n * n, torch.zeros(bsz, k - m, dtype=n.dtype, device=n.device)], dim=1)
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


def attend(
    relevance: Tensor,
    tex: Tensor,
    dt: Tensor,
    grid: tuple[int, int],
    k: int,
    explore_k: int,
    floor: float,
    crop_cells: int,
    max_foveal: int,
    max_total: int,
    kappa: float,
    inhibition: Tensor,
    nms_iou: Tensor,
    tau_fixation_s: float,
    confidence: Tensor | None = None,
) -> dict[str, Tensor]:
    """The whole stage: selection, crop windows, foveal budgets and the next fixation history.

    Reads channel fixation (the warped history, zero where it has none). The foveal budgets follow relevance
    times ``confidence``: a crop needs ``score * confidence >= floor`` and its size grows with that product, so a
    query the frame holds faintly buys small crops and one it does not hold buys none (the cells are still
    selected by relevance).

    Args:
        relevance: [B, gh, gw] in [0, 1]. tex: [B, C, gh, gw] texture. dt: [B] seconds. confidence: [B] in [0, 1]
            (:func:`arr_coc_stream.balancing.query_match`), None for 1. The rest: see :func:`select`,
            :func:`crop_windows`, :func:`foveal_budgets` and :func:`update_fixation`.

    Returns:
        indices [B, K] int64, scores [B, K], valid [B, K] bool, boxes [B, K, 4] int32 windows in cells,
        budgets [B, K] int32, lod [B, K] int32, fixation [B, gh, gw] in [0, 1].
    """
    bsz = relevance.shape[0]
    gh, gw = grid
    rel_flat = relevance.reshape(bsz, gh * gw)
    fix_flat = tex[:, idx("fixation")].reshape(bsz, gh * gw)
    indices, scores, selected = select(rel_flat, fix_flat, k, explore_k, floor, inhibition)
    boxes = crop_windows(indices, grid, crop_cells)
    crop_scores = scores if confidence is None else scores * confidence[:, None]
    budgets, lod = foveal_budgets(
        crop_scores, selected & (crop_scores >= floor), boxes, max_foveal, max_total, kappa, nms_iou
    )
    fixation = update_fixation(fix_flat, indices, selected, dt, tau_fixation_s)
    return {
        "indices": indices,
        "scores": scores,
        "valid": selected,
        "boxes": boxes.to(torch.int32),
        "budgets": budgets,
        "lod": lod,
        "fixation": fixation.reshape(bsz, gh, gw),
    }


class Attending(nn.Module):
    """Module twin of :func:`attend`: the configuration's counts and its two parameters (frozen, fittable)."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        p = config.params
        self.inhibition = nn.Parameter(torch.tensor(p["inhibition"]), requires_grad=False)
        self.nms_iou = nn.Parameter(torch.tensor(p["nms_iou"]), requires_grad=False)
        self.config = config

    def forward(self, relevance: Tensor, tex: Tensor, dt: Tensor, confidence: Tensor) -> dict[str, Tensor]:
        c = self.config
        return attend(
            relevance,
            tex,
            dt,
            c.grid,
            c.k,
            c.explore_k,
            c.relevance_floor,
            c.crop_cells,
            c.max_foveal,
            c.max_total_budget,
            c.kappa,
            self.inhibition,
            self.nms_iou,
            c.tau_fixation_s,
            confidence,
        )
