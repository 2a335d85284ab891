"""What a person looks at: the overlay video and the timeline plot (DESIGN.md section 9).

:func:`draw_overlay` draws one result on its frame: the relevance heatmap (dimmed where relevance is low, tinted
with the inferno colour map where it is high), the outline of the selected cells (cyan), each foveal crop window
(grey to white by budget, labelled ``L<level of detail> <budget>``), a banner with the frame index, time, query
and token counts, a red border and ``CUT`` label on a scene cut, and a legend.
:class:`OverlaySink` writes those frames to a fragmented MP4 (H.264) with PyAV, playable up to its last fragment
when the process is killed. :func:`plot_timeline` (matplotlib, imported
only when called) draws per-frame total budget, mean relevance, scene score with the detected cuts, and the share
of cells selected; :class:`TimelineSink` collects those numbers while a stream runs and plots them at the end.

Example:
    >>> import arr_coc_stream
    >>> arr_coc_stream.run("clip.mp4", query="red", overlay="overlay.mp4", plot="timeline.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import cv2  # before av: the other order can hang cv2.imshow (DESIGN.md section 11)
import av
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


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float,
          color: tuple[int, int, int]) -> tuple[int, int]:
    """Draw ``text`` on a dark box whose top-left corner is ``org``; return the box's (width, height)."""
    w, h, pad, base = _text_box(text, scale)
    x, y = org
    roi = img[max(y, 0):y + h, max(x, 0):x + w]
    roi[:] = (roi * 0.35).astype(np.uint8)  # dark box, the frame still faintly visible behind
    cv2.putText(img, text, (x + pad, y + h - pad - base), _FONT, scale, color, max(1, round(scale * 2)), cv2.LINE_AA)
    return w, h


def draw_overlay(frame: np.ndarray, result: FrameResult, *, query: str | None = None) -> np.ndarray:
    """Draw ``result`` on ``frame``.

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

    rel = np.clip(cv2.resize(result.relevance.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
    # Dim what the engine ignores, tint what it attends to: frame * (0.5 + 0.5 r) * (1 - r / 2) + heat * r / 2,
    # so the frame stays readable under the heat. blendLinear does it in one pass (numpy floats: 15 ms at 360p).
    tint = 0.5 * rel  # [H, W]
    out = cv2.blendLinear(np.ascontiguousarray(frame), _heat(rel), (0.5 + 0.5 * rel) * (1.0 - tint), tint)

    # Foveal crop windows, weakest first so the strongest is drawn on top; labels after the selection outline.
    sh, sw = result.source_size
    sx, sy = w / sw, h / sh
    crops = np.flatnonzero(result.budgets > 0)
    labels = []
    for i in crops[np.argsort(result.budgets[crops], kind="stable")]:
        x0, y0, x1, y1 = result.windows[i]
        p0 = (int(round(x0 * sx)), int(round(y0 * sy)))
        p1 = (int(round(x1 * sx)) - 1, int(round(y1 * sy)) - 1)
        budget, lod = int(result.budgets[i]), int(result.lod[i])
        v = int(round(255 * (0.3 + 0.7 * min(budget, MAX_BUDGET) / MAX_BUDGET)))
        cv2.rectangle(out, p0, p1, (v, v, v), line)
        labels.append((f"L{lod} {budget}", p0, p1, (v, v, v)))

    # Outline of the selected cells: boundary pixels of the selection mask at pixel resolution.
    rows = np.minimum(np.arange(h) * gh // h, gh - 1)
    cols = np.minimum(np.arange(w) * gw // w, gw - 1)
    mask = result.selection_mask()[rows][:, cols].astype(np.uint8)
    inner = cv2.erode(mask, np.ones((2 * line + 1, 2 * line + 1), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0)
    out[(mask > 0) & (inner == 0)] = OUTLINE_RGB

    small = font * 0.7
    label_h = _text_box("L0", small)[1]
    for text, p0, p1, colour in labels:  # above the window, or below it at the top edge of the frame
        y = p0[1] - label_h if p0[1] >= label_h else p1[1] + 1
        _text(out, text, (p0[0], y), small, colour)

    label = query if query is not None else " ".join(result.query_terms) or "(no query)"
    _, bh = _text(out, f"#{result.index}  {result.time:.2f}s  {label}", (0, 0), font, TEXT_RGB)
    _text(out, f"{int(result.valid.sum())} cells  {result.total_budget} crop tokens", (0, bh), font, TEXT_RGB)
    if result.cut:
        b = max(3, round(min(h, w) / 60))
        out[:b], out[-b:], out[:, :b], out[:, -b:] = CUT_RGB, CUT_RGB, CUT_RGB, CUT_RGB
        _text(out, "CUT", (w - _text_box("CUT", font * 1.6)[0] - b, b), font * 1.6, CUT_RGB)
    _legend(out, font, line)
    return out


def _legend(img: np.ndarray, font: float, line: int) -> None:
    """Key along the bottom-left corner: relevance colour bar, selection outline, crop windows."""
    h, w = img.shape[:2]
    scale = font * 0.8
    box_h = _text_box("0", scale)[1]
    bar_w = max(40, w // 8)
    x, y = 0, h - box_h
    x += _text(img, "relevance 0", (x, y), scale, TEXT_RGB)[0]
    bar_w = max(0, min(bar_w, w - x))  # a frame narrower than the key: the bar is cut, never overruns
    img[y:h, x:x + bar_w] = _heat(np.linspace(0.0, 1.0, bar_w))[None]  # [1, bar_w, 3] broadcast down
    x += bar_w
    x += _text(img, "1", (x, y), scale, TEXT_RGB)[0] + 4 * line
    dx, dy = _text(img, "selected", (x, y), scale, OUTLINE_RGB)
    cv2.rectangle(img, (x, y), (x + dx - 1, y + dy - 1), OUTLINE_RGB, line)
    x += dx + 4 * line
    key = "crop: L<detail, 0 finest> <tokens>, brighter = more"
    if x + _text_box(key, scale)[0] > w:  # a narrow frame: this key goes on its own line above
        x, y = 0, y - box_h - 2
    _text(img, key, (x, y), scale, TEXT_RGB)


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

    def __init__(self, path: str | os.PathLike[str], *, fps: float | None = None, scale: float = 1.0,
                 query: str | None = None, crf: int = 20) -> None:
        if not 0.0 < scale <= 4.0:
            raise ConfigError(f"overlay scale must be in (0, 4], got {scale}")
        self.path = Path(path)
        if self.path.suffix.lower() not in OVERLAY_SUFFIXES:
            raise ConfigError(f"overlay {self.path}: the overlay is a fragmented MP4, name it "
                              f"{' / '.join(OVERLAY_SUFFIXES)}")
        self.rate = Fraction(fps or DEFAULT_FPS).limit_denominator(1001)  # 29.97 stays 30000/1001
        self.scale, self.query, self.crf = scale, query, crf
        self._container: Any = None
        self._stream: Any = None
        self._last_pts = -1

    def write(self, result: FrameResult, frame: Frame | np.ndarray) -> None:
        """Draw ``result`` on its full-resolution ``frame`` ([H, W, 3] uint8 RGB, or a :class:`Frame`) and encode it."""
        image = frame if isinstance(frame, np.ndarray) else (frame.full if frame.full is not None else frame.rgb)
        if image.shape[:2] != tuple(result.source_size):
            raise ConfigError(f"the overlay needs frames at the source resolution {result.source_size}, got "
                              f"{image.shape[:2]}: open the source with keep_full=True")
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
            self._container = av.open(str(self.path), "w", format=OVERLAY_SUFFIXES[self.path.suffix.lower()],
                                      options=FRAGMENTED)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise OutputError(f"cannot create the overlay video {self.path}: {e}") from e
        self._stream = self._container.add_stream("libx264", rate=self.rate,
                                                  options={"crf": str(self.crf), "preset": "veryfast"})
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
    return (result.index, result.time, result.total_budget, float(result.relevance.mean()), result.scene_score,
            float(result.valid.sum()) / result.relevance.size, float(result.cut))


def timeline_data(results: Iterable[FrameResult]) -> dict[str, np.ndarray]:
    """Per-frame series of a run: each of :data:`TIMELINE_FIELDS` -> [n] array (``cut`` as bool)."""
    return _series([timeline_row(r) for r in results])


def _series(rows: list[tuple[float, ...]]) -> dict[str, np.ndarray]:
    table = np.array(rows, dtype=np.float64).reshape(-1, len(TIMELINE_FIELDS))  # [n, fields]
    data = {name: table[:, i] for i, name in enumerate(TIMELINE_FIELDS)}
    data["index"], data["cut"] = data["index"].astype(np.int64), data["cut"].astype(bool)
    return data


def _pyplot_free_figure(**kwargs: Any) -> "Figure":
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtraError("the timeline plot", "plot") from e
    return Figure(**kwargs)  # no pyplot: no global figure registry, no GUI backend


def plot_timeline(results: Iterable[FrameResult] | dict[str, np.ndarray], path: str | os.PathLike[str] | None = None,
                  *, title: str | None = None, cut_threshold: float | None = None,
                  budget_cap: int | None = None) -> "Figure":
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
    tops = [max(float(data["total_budget"].max(initial=0)), budget_cap or 0), data["mean_relevance"].max(initial=0),
            data["selected_fraction"].max(initial=0)]
    for ax, top in zip((axes[0], axes[1], axes[3]), tops):
        ax.set_ylim(0, 1.08 * top or 1.0)
    axes[-1].set_xlabel("frame index")
    if len(cuts):
        axes[0].set_title(("cut at frame " if len(cuts) == 1 else "cuts at frames ") + ", ".join(map(str, cuts)),
                          fontsize="small", loc="left")
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

    def __init__(self, path: str | os.PathLike[str], *, title: str | None = None,
                 cut_threshold: float | None = None, budget_cap: int | None = None) -> None:
        _pyplot_free_figure()
        self.path, self.title = Path(path), title
        self._options = {"cut_threshold": cut_threshold, "budget_cap": budget_cap}
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
            plot_timeline(_series(self._rows), self.path, title=self.title, **self._options)
        except OSError as e:
            raise OutputError(f"cannot write the timeline plot {self.path}: {e}") from e
