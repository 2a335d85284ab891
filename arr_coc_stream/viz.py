"""What a person looks at: the overlay video and the timeline plot (DESIGN.md section 9).

:func:`draw_overlay` draws one result on its frame: cells outside the selection dimmed (at least 45% darker)
with their relevance as an inferno colour cast, selected cells at the source's brightness with a cyan outline,
one numbered outline per foveal crop window (grey to white by budget, never drawn across a stronger window), a
banner with the frame index, time, query and token counts, a thick red border and ``CUT`` tag on a scene cut, and
a legend that gives each window's level of detail and budget.
:class:`OverlaySink` writes those frames to a fragmented MP4 (H.264) with PyAV, playable up to its last fragment
when the process is killed. :func:`plot_timeline` (matplotlib, imported
only when called) draws per-frame total budget, mean relevance, scene score with the detected cuts, and the share
of cells selected; :class:`TimelineSink` collects those numbers while a stream runs and plots them at the end.

Examples:
    >>> import arr_coc_stream
    >>> arr_coc_stream.run("clip.mp4", query="red", overlay="overlay.mp4", plot="timeline.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import cv2  # before av: the other order can hang cv2.imshow (DESIGN.md section 11)
import numpy as np

from .errors import ConfigError, MissingExtraError, OutputError
from .result import FrameResult
from .sources.base import DEFAULT_FPS, Frame

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OUTLINE_RGB = (0, 255, 255)  # cyan: apart from every inferno colour, so the selection reads on any heat
CUT_RGB = (255, 40, 40)
TEXT_RGB = (255, 255, 255)
MAX_BUDGET = 400  # the largest foveal budget (20 x 20 tokens): full brightness
# Cells outside the selection keep DIM_FLOOR of each channel plus up to DIM_TINT coloured by their relevance's
# heat: at most 0.55 of the source, so they read as dimmed at a glance (issue 16 asks for >= 40% darker).
DIM_FLOOR = 0.25
DIM_TINT = 0.30
SELECTED_TINT = 0.25  # selected cells: the source at full brightness, a quarter of the heat blended in
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _heat(values: np.ndarray) -> np.ndarray:
    """Inferno colours of values in [0, 1]. [...] float -> [..., 3] uint8 RGB."""
    u8 = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8.reshape(-1, 1), cv2.COLORMAP_INFERNO)[:, 0, ::-1].reshape(*values.shape, 3)


def _text_box(text: str, scale: float) -> tuple[int, int, int, int]:
    """(width, height, padding, baseline) of the box :func:`_text` draws for ``text``."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, max(1, round(scale * 2)))
    pad = max(2, round(th * 0.3))
    return tw + 2 * pad, th + base + 2 * pad, pad, base


def _text(
    img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int]
) -> tuple[int, int]:
    """Draw ``text`` on a dark box whose top-left corner is ``org``; return the box's (width, height)."""
    w, h, pad, base = _text_box(text, scale)
    x, y = org
    roi = img[max(y, 0) : y + h, max(x, 0) : x + w]
    roi[:] = (roi * 0.35).astype(np.uint8)  # dark box, the frame still faintly visible behind
    cv2.putText(img, text, (x + pad, y + h - pad - base), _FONT, scale, color, max(1, round(scale * 2)), cv2.LINE_AA)
    return w, h


def _tag(
    img: np.ndarray,
    text: str,
    org: tuple[int, int],
    scale: float,
    fill: tuple[int, int, int],
    color: tuple[int, int, int] = (0, 0, 0),
) -> tuple[int, int]:
    """Draw ``text`` in ``color`` on a box filled with ``fill`` at top-left ``org``; return its (width, height)."""
    w, h, pad, base = _text_box(text, scale)
    x, y = org
    img[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] = fill  # clipped to the frame (negative ends wrap)
    cv2.putText(img, text, (x + pad, y + h - pad - base), _FONT, scale, color, max(1, round(scale * 2)), cv2.LINE_AA)
    return w, h


def draw_overlay(frame: np.ndarray, result: FrameResult, *, query: str | None = None) -> np.ndarray:
    """Draw ``result`` on ``frame``.

    Cells outside the selection are dimmed to at most :data:`DIM_FLOOR` + :data:`DIM_TINT` of each channel (so
    their luminance is at least 45% below the source's), tinted by their relevance; selected cells keep the
    source's brightness under a light tint and a cyan outline. Each foveal window with a budget is one outline
    (grey to white by budget) with a number; a weaker window's outline stops at a stronger one's edge, so
    overlapping windows read as layers, not crossed boxes, and the legend gives each number's level of detail
    and budget. A cut frame gets a thick red border and a ``CUT`` tag.

    Args:
        frame: [H, W, 3] uint8 RGB, the source frame at any scale (coordinates are mapped from
            ``result.source_size``).
        result: the frame's result.
        query: the query text for the banner; None shows ``result.query_terms``.

    Returns:
        [H, W, 3] uint8 RGB, a new array.
    """
    h, w = frame.shape[:2]
    gh, gw = result.grid
    line = max(1, round(min(h, w) / 240))  # 1 px at 240p, 2 px at 480p, 3 px at 720p
    font = max(0.4, min(h, w) / 720)
    frame = np.ascontiguousarray(frame)

    rel = np.clip(cv2.resize(result.relevance.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
    heat = _heat(rel)  # [H, W, 3]
    # Outside the selection: frame * (DIM_FLOOR + DIM_TINT * heat / 255) per channel, in uint8 arithmetic (numpy
    # floats cost 15 ms at 360p), so relevance still shows as a colour cast on a frame that is clearly darker.
    gain = cv2.convertScaleAbs(heat, alpha=DIM_TINT, beta=255.0 * DIM_FLOOR)  # [H, W, 3], gain * 255
    out = cv2.multiply(frame, gain, scale=1.0 / 255.0)
    tint = SELECTED_TINT * rel  # [H, W]
    lit = cv2.blendLinear(frame, heat, 1.0 - tint, tint)
    rows = np.minimum(np.arange(h) * gh // h, gh - 1)
    cols = np.minimum(np.arange(w) * gw // w, gw - 1)
    mask = result.selection_mask()[rows][:, cols].astype(np.uint8)  # [H, W], 1 in selected cells
    np.copyto(out, lit, where=mask[..., None] > 0)

    # Outline of the selected cells: boundary pixels of the selection mask at pixel resolution.
    inner = cv2.erode(
        mask, np.ones((2 * line + 1, 2 * line + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    out[(mask > 0) & (inner == 0)] = OUTLINE_RGB

    crops = _draw_windows(out, result, line + 1, font * 0.7)  # one px bolder than the cells: windows read first

    b = 0
    if result.cut:
        b = max(4, round(min(h, w) / 40))  # 7 px at 272p, 18 px at 720p: seen at a glance
        out[:b], out[-b:], out[:, :b], out[:, -b:] = CUT_RGB, CUT_RGB, CUT_RGB, CUT_RGB
        _tag(out, "CUT", (w - _text_box("CUT", font * 1.6)[0] - b, b), font * 1.6, CUT_RGB, TEXT_RGB)
    label = query if query is not None else " ".join(result.query_terms) or "(no query)"
    _, bh = _text(out, f"#{result.index}  {result.time:.2f}s  {label}", (b, b), font, TEXT_RGB)
    _text(out, f"{int(result.valid.sum())} cells  {result.total_budget} crop tokens", (b, b + bh), font, TEXT_RGB)
    _legend(out, font, line, crops, inset=b)
    return out


def _draw_windows(
    img: np.ndarray, result: FrameResult, line: int, scale: float
) -> list[tuple[str, tuple[int, int, int]]]:
    """Draw one numbered outline per foveal window with a budget, strongest (first in score order) on top.

    A window's outline is drawn only outside the windows already drawn, so a weaker window's edge stops where a
    stronger one begins; its number goes in the first corner (top-left, top-right, bottom-left, bottom-right) not
    under a stronger window.

    Returns:
        One legend entry per window, in number order: (``"<n> L<lod> <budget>"``, its grey).
    """
    h, w = img.shape[:2]
    sh, sw = result.source_size
    sx, sy = w / sw, h / sh
    covered = np.zeros((h, w), bool)  # [H, W], inside a window already drawn (outline included)
    entries = []
    for n, i in enumerate(np.flatnonzero(result.budgets > 0), 1):  # indices are in score order
        x0, y0, x1, y1 = result.windows[i]
        x0, x1 = max(0, int(round(x0 * sx))), min(w, int(round(x1 * sx)))
        y0, y1 = max(0, int(round(y0 * sy))), min(h, int(round(y1 * sy)))
        if x1 <= x0 or y1 <= y0:
            continue
        budget, lod = int(result.budgets[i]), int(result.lod[i])
        v = int(round(255 * (0.3 + 0.7 * min(budget, MAX_BUDGET) / MAX_BUDGET)))
        colour = (v, v, v)
        ring = np.zeros((y1 - y0, x1 - x0), np.uint8)  # [wh, ww], the outline inside the window's box
        cv2.rectangle(ring, (0, 0), (x1 - x0 - 1, y1 - y0 - 1), 1, line)
        img[y0:y1, x0:x1][(ring > 0) & ~covered[y0:y1, x0:x1]] = colour
        tw, th = _text_box(str(n), scale)[:2]
        corners = [
            (x0 + line, y0 + line),
            (x1 - line - tw, y0 + line),
            (x0 + line, y1 - line - th),
            (x1 - line - tw, y1 - line - th),
        ]
        free = [(x, y) for x, y in corners if x >= 0 and y >= 0 and not covered[y : y + th, x : x + tw].any()]
        _tag(img, str(n), (free or corners)[0], scale, colour)
        covered[y0:y1, x0:x1] = True
        entries.append((f"{n} L{lod} {budget}", colour))
    return entries


def _legend(
    img: np.ndarray, font: float, line: int, crops: list[tuple[str, tuple[int, int, int]]], *, inset: int = 0
) -> None:
    """Key along the bottom-left corner, ``inset`` px from the edges (inside a cut's border): relevance colour bar,
    selection outline, dimming, then each crop window's tag (number, level of detail, budget) in its grey; entries
    that do not fit wrap onto a line above."""
    h, w = img.shape[:2]
    scale = font * 0.8
    box_h = _text_box("0", scale)[1]
    gap = 4 * line
    bar_w = max(40, w // 8)
    x, y = inset, h - inset - box_h
    x += _text(img, "relevance 0", (x, y), scale, TEXT_RGB)[0]
    bar_w = max(0, min(bar_w, w - inset - x))  # a frame narrower than the key: the bar is cut, never overruns
    img[y : y + box_h, x : x + bar_w] = _heat(np.linspace(0.0, 1.0, bar_w))[None]  # [1, bar_w, 3] broadcast down
    x += bar_w
    x += _text(img, "1", (x, y), scale, TEXT_RGB)[0] + gap
    # (text, colour, kind): "outlined" like the selection, a "tag" filled like a window's number, or plain "text"
    items = [("selected", OUTLINE_RGB, "outlined"), ("dimmed: not selected", TEXT_RGB, "text")]
    if crops:
        items += [("crop: n L<detail, 0 finest> <tokens>", TEXT_RGB, "text"), *((t, c, "tag") for t, c in crops)]
    for text, colour, kind in items:
        if x > inset and x + _text_box(text, scale)[0] > w - inset:
            x, y = inset, y - box_h - 2
        if y < 0:  # a frame too small for the whole key
            break
        if kind == "tag":
            dx, dy = _tag(img, text, (x, y), scale, colour)
        else:
            dx, dy = _text(img, text, (x, y), scale, colour)
        if kind == "outlined":
            cv2.rectangle(img, (x, y), (x + dx - 1, y + dy - 1), colour, line)
        x += dx + gap


# Fragmented MP4: an empty index up front, then a fragment (moof + mdat) per keyframe, each flushed to the file as
# it is muxed, so a killed writer leaves every finished fragment playable.
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
OVERLAY_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}  # file name suffix -> FFmpeg muxer


def _even(v: float) -> int:
    return max(2, int(round(v / 2)) * 2)


class OverlaySink:
    """Write each frame with its result drawn on it (:func:`draw_overlay`) to an H.264 video with PyAV.

    The video has the source's frame rate and size (times ``scale``, rounded to even sides as 4:2:0 chroma needs);
    each frame's timestamp is its source time, so dropped frames keep their place in time. The file is opened
    on the first frame. It is a fragmented MP4 (``movflags`` :data:`FRAGMENTED`) with a keyframe, so a fragment
    written out, every second: a plain MP4 keeps its index (the ``moov`` atom) until the end and is unplayable
    after a kill; a fragmented one loses at most the last second (ffprobe and PyAV read the rest).

    Args:
        path: output video (``.mp4``, ``.m4v``, ``.mov``; parent folders are created).
        fps: frame rate of the output (the source's); None uses 30.
        scale: output size relative to the source, in (0, 4].
        query: the query text for the banner.
        crf: x264 quality (lower is better, 18-28 typical).

    Raises:
        ConfigError: ``scale`` out of range, or a frame that is not at the source resolution.
        OutputError: the file cannot be created or written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float | None = None,
        scale: float = 1.0,
        query: str | None = None,
        crf: int = 20,
    ) -> None:
        if not 0.0 < scale <= 4.0:
            raise ConfigError(f"overlay scale must be in (0, 4], got {scale}")
        self.path = Path(path)
        if self.path.suffix.lower() not in OVERLAY_SUFFIXES:
            raise ConfigError(
                f"overlay {self.path}: the overlay is a fragmented MP4, name it {' / '.join(OVERLAY_SUFFIXES)}"
            )
        self.rate = Fraction(fps or DEFAULT_FPS).limit_denominator(1001)  # 29.97 stays 30000/1001
        self.scale, self.query, self.crf = scale, query, crf
        self._container: Any = None
        self._stream: Any = None
        self._last_pts = -1

    def write(self, result: FrameResult, frame: Frame | np.ndarray) -> None:
        """Draw ``result`` on its full-resolution ``frame`` ([H, W, 3] uint8 RGB, or a :class:`Frame`) and encode it."""
        image = frame if isinstance(frame, np.ndarray) else (frame.full if frame.full is not None else frame.rgb)
        if image.shape[:2] != tuple(result.source_size):
            raise ConfigError(
                f"the overlay needs frames at the source resolution {result.source_size}, got "
                f"{image.shape[:2]}: open the source with keep_full=True"
            )
        if self._container is None:
            self._open(image.shape[0], image.shape[1])
        if image.shape[:2] != (self._stream.height, self._stream.width):
            image = cv2.resize(image, (self._stream.width, self._stream.height), interpolation=cv2.INTER_AREA)
        vf = av.VideoFrame.from_ndarray(draw_overlay(image, result, query=self.query), format="rgb24")
        self._last_pts = max(self._last_pts + 1, int(round(result.time * self.rate)))
        vf.pts, vf.time_base = self._last_pts, 1 / self.rate
        try:
            self._container.mux(self._stream.encode(vf))
        except (av.FFmpegError, OSError) as e:
            raise OutputError(f"cannot write the overlay video {self.path}: {e}") from e

    def _open(self, h: int, w: int) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(
                str(self.path), "w", format=OVERLAY_SUFFIXES[self.path.suffix.lower()], options=FRAGMENTED
            )
        except (av.FFmpegError, OSError, ValueError) as e:
            raise OutputError(f"cannot create the overlay video {self.path}: {e}") from e
        self._stream = self._container.add_stream(
            "libx264", rate=self.rate, options={"crf": str(self.crf), "preset": "veryfast"}
        )
        self._stream.width, self._stream.height = _even(w * self.scale), _even(h * self.scale)
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = 1 / self.rate
        self._stream.codec_context.gop_size = max(1, round(self.rate))  # a keyframe, so a fragment, every second

    def close(self) -> None:
        """Flush the encoder and close the file; safe to call more than once."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            container.mux(self._stream.encode())
        except (av.FFmpegError, OSError) as e:
            raise OutputError(f"cannot write the overlay video {self.path}: {e}") from e
        finally:
            container.close()


TIMELINE_FIELDS = ("index", "time", "total_budget", "mean_relevance", "scene_score", "selected_fraction", "cut")


def timeline_row(result: FrameResult) -> tuple[float, ...]:
    """The numbers :func:`plot_timeline` draws for one frame, in :data:`TIMELINE_FIELDS` order."""
    return (
        result.index,
        result.time,
        result.total_budget,
        float(result.relevance.mean()),
        result.scene_score,
        float(result.valid.sum()) / result.relevance.size,
        float(result.cut),
    )


def timeline_data(results: Iterable[FrameResult]) -> dict[str, np.ndarray]:
    """Per-frame series of a run: each of :data:`TIMELINE_FIELDS` -> [n] array (``cut`` as bool)."""
    return _series([timeline_row(r) for r in results])


def _series(rows: list[tuple[float, ...]]) -> dict[str, np.ndarray]:
    table = np.array(rows, dtype=np.float64).reshape(-1, len(TIMELINE_FIELDS))  # [n, fields]
    data = {name: table[:, i] for i, name in enumerate(TIMELINE_FIELDS)}
    data["index"], data["cut"] = data["index"].astype(np.int64), data["cut"].astype(bool)
    return data


def _pyplot_free_figure(**kwargs: Any) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtraError("the timeline plot", "plot") from e
    return Figure(**kwargs)  # no pyplot: no global figure registry, no GUI backend


def plot_timeline(
    results: Iterable[FrameResult] | dict[str, np.ndarray],
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    cut_threshold: float | None = None,
    budget_cap: int | None = None,
) -> Figure:
    """Plot a run's per-frame total budget, mean relevance, scene score with the detected cuts, and selected share.

    Four panels over the frame index share the x axis; every detected cut is a red vertical line on each panel
    (its artists carry ``gid="cut"``), and a red dot on the scene score.

    Args:
        results: the run's results, or :func:`timeline_data` of them.
        path: write the figure here (PNG, SVG, PDF... by extension; parent folders are created).
        title: figure title.
        cut_threshold: draw the cut detector's threshold on the scene-score panel.
        budget_cap: draw the per-frame budget cap (``max_total_budget``) on the budget panel.

    Returns:
        The matplotlib figure (made without pyplot, so no global state changes).
    """
    data = results if isinstance(results, dict) else timeline_data(results)
    fig = _pyplot_free_figure(figsize=(10, 7.5), dpi=110, layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    x = data["index"]
    cuts = x[data["cut"]]
    panels = [
        ("total_budget", "crop tokens\n(total budget)", "tab:blue"),
        ("mean_relevance", "mean relevance", "tab:orange"),
        ("scene_score", "scene score", "tab:purple"),
        ("selected_fraction", "cells selected\n(fraction)", "tab:green"),
    ]
    for ax, (key, label, colour) in zip(axes, panels):
        ax.plot(x, data[key], color=colour, linewidth=1.2)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        for c in cuts:
            ax.axvline(c, color="red", linewidth=1.0, alpha=0.6, gid="cut")
    if budget_cap is not None:
        axes[0].axhline(budget_cap, color="grey", linestyle="--", linewidth=1.0, label=f"cap {budget_cap}")
        axes[0].legend(loc="lower right", fontsize="small")
    scene = axes[2]
    if cut_threshold is not None:
        scene.axhline(cut_threshold, color="grey", linestyle="--", linewidth=1.0, label="cut threshold")
    scene.plot(cuts, data["scene_score"][data["cut"]], "o", color="red", label=f"detected cut ({len(cuts)})")
    scene.set_ylim(-0.02, 1.4)  # headroom above 1 for the legend, clear of the cut markers
    scene.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    scene.legend(loc="upper center", ncols=2, fontsize="small")
    # From zero, so a jitter near the cap does not look like a swing; 8% above the top so it stays visible.
    tops = [
        max(float(data["total_budget"].max(initial=0)), budget_cap or 0),
        data["mean_relevance"].max(initial=0),
        data["selected_fraction"].max(initial=0),
    ]
    for ax, top in zip((axes[0], axes[1], axes[3]), tops):
        ax.set_ylim(0, 1.08 * top or 1.0)
    axes[-1].set_xlabel("frame index")
    if len(cuts):
        axes[0].set_title(
            ("cut at frame " if len(cuts) == 1 else "cuts at frames ") + ", ".join(map(str, cuts)),
            fontsize="small",
            loc="left",
        )
    if title:
        fig.suptitle(title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig


class TimelineSink:
    """Collect :func:`timeline_row` per frame while a stream runs; :meth:`close` writes :func:`plot_timeline`.

    Only a few numbers per frame are kept, so it suits long streams. matplotlib is imported here, so a missing
    install fails before the run, not after it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        title: str | None = None,
        cut_threshold: float | None = None,
        budget_cap: int | None = None,
    ) -> None:
        _pyplot_free_figure()
        self.path, self.title = Path(path), title
        self._cut_threshold, self._budget_cap = cut_threshold, budget_cap
        self._rows: list[tuple[float, ...]] = []
        self._closed = False

    def write(self, result: FrameResult, frame: Frame | np.ndarray | None = None) -> None:
        self._rows.append(timeline_row(result))

    def close(self) -> None:
        """Write the plot (of the frames seen so far); safe to call more than once.

        Raises:
            OutputError: the file cannot be written.
        """
        if self._closed:
            return
        self._closed = True
        try:
            plot_timeline(
                _series(self._rows),
                self.path,
                title=self.title,
                cut_threshold=self._cut_threshold,
                budget_cap=self._budget_cap,
            )
        except OSError as e:
            raise OutputError(f"cannot write the timeline plot {self.path}: {e}") from e
