"""The overlay read at a glance (issue 16): non-selected cells clearly dimmed, one outline per budgeted foveal window
(no stacked boxes), cuts unmistakable."""

from __future__ import annotations

import cv2
import numpy as np
import skimage.data
from conftest import hand_result, selection_pixels

import arr_coc_stream as acs
from arr_coc_stream import viz

LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luma weights of R, G, B
BAND = slice(64, 400)  # rows clear of the banner (top) and the legend (bottom) on the 480-row frames here


def _luma_ratio(out: np.ndarray, src: np.ndarray, where: np.ndarray) -> float:
    """Mean luminance of ``out`` over ``where`` divided by the source's over the same pixels."""
    return float((out[where] @ LUMA).mean() / (src[where] @ LUMA).mean())


def test_non_selected_cells_are_at_least_40_percent_darker() -> None:
    # a real photograph, and the worst case for dimming: every non-selected cell at full relevance, whose
    # inferno colour (near white-yellow) is the brightest tint there is
    src = cv2.resize(skimage.data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    cells = [(y, x) for y in range(8, 20) for x in range(10, 22)]
    res = hand_result((32, 32), (480, 640), cells, relevance=np.ones((32, 32), np.float32))
    out = viz.draw_overlay(src, res)
    selected = selection_pixels(res, 480, 640)
    inner = cv2.erode(selected.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # clear of the cyan outline
    outside = ~cv2.dilate(selected.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    outside[: BAND.start], outside[BAND.stop :] = False, False
    ratio = _luma_ratio(out, src, outside)
    assert ratio <= 0.60, f"non-selected cells keep {ratio:.2f} of the source's luminance"
    assert _luma_ratio(out, src, inner) >= 0.85  # the selection stays at the source's brightness: the contrast


def test_a_real_result_dims_what_it_does_not_select() -> None:
    src = cv2.resize(skimage.data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    res = acs.run([src], query="red")[0]  # the engine's own relevance and selection on a known frame
    out = viz.draw_overlay(src, res)
    outside = ~cv2.dilate(selection_pixels(res, 480, 640).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    outside[: BAND.start], outside[BAND.stop :] = False, False
    for x0, y0, x1, y1 in res.windows[res.budgets > 0]:  # window outlines pass through unselected cells
        outside[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = False
    assert outside.sum() > 10_000 and res.valid.sum() > 0
    assert _luma_ratio(out, src, outside) <= 0.60


def _holes(out: np.ndarray) -> int:
    """Closed regions (larger than a cell) bounded by grey window outlines in the band of ``out``."""
    band = out[BAND]
    grey = ((band[..., 0] == band[..., 1]) & (band[..., 1] == band[..., 2]) & (band[..., 0] > 0)).astype(np.uint8)
    contours, hierarchy = cv2.findContours(grey, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return 0
    # inner contours are holes; the glyph holes of the window numbers are far below a 32 px cell
    return sum(1 for c, h in zip(contours, hierarchy[0]) if h[3] != -1 and cv2.contourArea(c) > 32 * 32)


def test_one_outline_per_budgeted_window_and_none_for_suppressed_ones() -> None:
    # 640x480 on a 15x20 grid: 32 px cells. A and B overlap (IoU 0.14, kept by the suppression), C lies over A and
    # got no budget (suppressed), D and E stand alone: four windows with a budget, so four outlines.
    frame = np.zeros((480, 640, 3), np.uint8)
    windows = [(32, 96, 160, 224), (96, 160, 224, 288), (64, 96, 192, 224), (320, 96, 448, 224), (480, 224, 608, 352)]
    cells = [(4, 2), (6, 4), (4, 3), (4, 11), (8, 16)]
    res = hand_result((15, 20), (480, 640), cells, budgets=[400, 256, 0, 196, 100], windows=windows)
    out = viz.draw_overlay(frame, res)
    assert _holes(out) == int((res.budgets > 0).sum()) == 4
    assert not out[96, 170:190].any()  # C's top edge, right of A: not drawn
    # stacked boxes (every window drawn whole, as before issue 16) would split A and B into three regions
    stacked = np.zeros_like(frame)
    for x0, y0, x1, y1 in np.array(windows)[res.budgets > 0]:
        cv2.rectangle(stacked, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), (200, 200, 200), 2)
    assert _holes(stacked) == 5


def test_the_legend_gives_each_window_its_level_of_detail_and_budget() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    cells, windows = [(4, 2), (4, 11)], [(32, 96, 160, 224), (320, 96, 448, 224)]
    with_crops = viz.draw_overlay(frame, hand_result((15, 20), (480, 640), cells, budgets=[400, 100], windows=windows))
    without = viz.draw_overlay(frame, hand_result((15, 20), (480, 640), cells, windows=windows))
    grey = round(255 * (0.3 + 0.7 * 100 / viz.MAX_BUDGET))  # the 100-token window's grey fills its legend tag
    legend = slice(BAND.stop, None)
    assert np.all(with_crops[legend] == grey, axis=-1).sum() > 300
    assert np.all(without[legend] == grey, axis=-1).sum() < 50


def test_a_cut_frame_is_framed_in_red() -> None:
    frame = np.full((480, 640, 3), 128, np.uint8)
    res = hand_result((15, 20), (480, 640), [(7, 10)])
    plain = viz.draw_overlay(frame, res)
    res.cut = True
    marked = viz.draw_overlay(frame, res)
    red = np.all(marked == viz.CUT_RGB, axis=-1)
    assert red[:4].all() and red[-4:].all() and red[:, :4].all() and red[:, -4:].all()  # the whole border
    assert red[:60, -120:].mean() > 0.3  # and the CUT tag in the top-right corner
    assert not np.all(plain == viz.CUT_RGB, axis=-1).any()
