"""Attending stage: selection, foveal budgets against a plain greedy reference, fixation update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arr_coc_stream import attending


def _greedy_reference(scores, valid, boxes, max_foveal, max_total, kappa, iou_thr):
    """The budget rule of DESIGN.md section 9, one candidate at a time, in plain Python."""
    budgets = [0] * len(scores)
    accepted: list[list[int]] = []
    remaining = max_total
    for i in range(min(max_foveal, len(scores))):
        if not valid[i]:
            continue
        y0, x0, y1, x1 = boxes[i]
        if any(_iou((y0, x0, y1, x1), a) > iou_thr for a in accepted):
            continue
        side = min(20, max(8, round(math.sqrt(64 + 336 * min(max(scores[i], 0.0), 1.0) ** kappa))))
        side = min(side, math.isqrt(int(remaining)))
        if side < 8:
            continue
        budgets[i] = side * side
        remaining -= side * side
        accepted.append([y0, x0, y1, x1])
    return budgets


def _iou(a, b) -> float:
    iy = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ix = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iy * ix
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("iou_thr,max_total,crop", [(0.25, 1024, 4), (0.0, 1024, 3), (0.5, 500, 4)])
def test_vectorised_budgets_equal_the_greedy_rule(seed: int, iou_thr: float, max_total: int, crop: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rel = torch.rand(2, 1024, generator=gen) ** (1 + seed % 4)
    idx, scores, valid = attending.select(rel, torch.zeros_like(rel), 60, 15, 0.3, torch.tensor(0.8))
    boxes = attending.crop_windows(idx, (32, 32), crop)
    budgets, lod = attending.foveal_budgets(scores, valid, boxes, 12, max_total, 1.5, torch.tensor(iou_thr))
    for b in range(2):
        want = _greedy_reference(scores[b].tolist(), valid[b].tolist(), boxes[b].tolist(), 12, max_total, 1.5, iou_thr)
        assert budgets[b].tolist() == want
    assert (budgets.sum(dim=1) <= max_total).all()
    got = budgets[budgets > 0].numpy()
    np.testing.assert_array_equal(
        lod[budgets > 0].numpy(), np.select([got >= 300, got >= 200, got >= 100], [0, 1, 2], 3)
    )
    assert (lod[budgets == 0] == -1).all()


def test_selection_is_a_maximum_not_a_quota() -> None:
    rel = torch.zeros(1, 1024)
    rel[0, :7] = torch.linspace(0.9, 0.5, 7)
    idx, scores, valid = attending.select(rel, torch.zeros_like(rel), 200, 50, 0.3, torch.tensor(0.8))
    assert int(valid.sum()) == 7 and set(idx[0, :7].tolist()) == set(range(7))
    assert torch.all(scores[0, 1:] <= scores[0, :-1])


def test_explore_slots_avoid_fixated_cells_but_relevance_keeps_no_inhibition() -> None:
    rel = torch.linspace(1.0, 0.5, 1024)[None]
    fixation = torch.zeros(1, 1024)
    fixation[0, 150:250] = 1.0  # the cells right after the exploit slots were just looked at
    idx, _, _ = attending.select(rel, fixation, 200, 50, 0.3, torch.tensor(1.0))
    explore = set(idx[0].tolist()) - set(range(150))
    assert len(explore) == 50 and explore.isdisjoint(range(150, 250))
    idx0, _, _ = attending.select(rel, torch.zeros_like(rel), 200, 50, 0.3, torch.tensor(1.0))
    assert set(idx0[0].tolist()) == set(range(200))


def test_fixation_is_an_ema_of_valid_selections() -> None:
    fix = torch.zeros(1, 16)
    idx = torch.tensor([[3, 5, 7]])
    valid = torch.tensor([[True, True, False]])
    out = attending.update_fixation(fix, idx, valid, torch.tensor([0.1]), 1.0)
    d = math.exp(-0.1)
    assert out[0, 3] == pytest.approx(1 - d) and out[0, 5] == pytest.approx(1 - d) and out[0, 7] == 0
    assert float(out.sum()) == pytest.approx(2 * (1 - d))
