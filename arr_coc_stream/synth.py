"""Synthetic test clips built from real scikit-image photographs, with known ground truth.

Every generator returns a :class:`Clip` whose frames are uint8 RGB arrays and whose ground truth is exact:
object masks (what a query is about), content motion per frame, and the first frame of each new shot. All
generators are deterministic given ``seed``. :func:`default_clip` writes the README's demo clip once into a
cache folder.

Conventions:
    * ``Clip.masks[t]`` is a bool ``[H, W]`` array, True on the pixels of the object ``Clip.query`` targets.
    * ``Clip.shift_px = (dy, dx)`` is the motion of the frame's CONTENT in pixels per frame: +x means content
      moved right, +y down, so ``frames[t + 1][y + dy, x + dx] == frames[t][y, x]`` wherever both exist
      (the same sign as the library's flow, DESIGN.md section 6).
    * ``Clip.cuts`` lists the index of the first frame of each new shot; a slow fade is not a cut.

Examples:
    >>> clip = moving_object("red", n_frames=8)
    >>> clip.frames[0].shape, clip.masks[0].dtype, clip.query
    ((256, 256, 3), dtype('bool'), 'where is the red ball?')
"""

from __future__ import annotations

import functools
import os
import string
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import ConfigError

# CSS4 values, so the attribute query encoder's colour targets match the painted objects.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "blue": (0, 0, 255),
    "green": (0, 128, 0),
    "yellow": (255, 255, 0),
    "orange": (255, 165, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
# A background pixel closer than this (Euclidean, RGB 0-255) to an object's colour could be mistaken for it.
NEAR_COLOUR_DIST = 80.0
MAX_NEAR_FRACTION = 0.01

DEFAULT_CLIP_NAME = "default_clip.mp4"
# Written into the cached file's metadata: bump it when the default clip changes, so stale caches are rebuilt.
_DEFAULT_CLIP_TAG = "arr_coc_stream default_clip v2"
_DEFAULT_CLIP_FRAMES = 150


@dataclass
class Clip:
    """A synthetic clip and its ground truth.

    Attributes:
        frames: ``n`` uint8 RGB frames, each ``[H, W, 3]``.
        fps: frames per second (may be fractional, e.g. 29.97).
        masks: ``n`` bool ``[H, W]`` masks of the object ``query`` targets, or None when there is none.
        cuts: index of the first frame of each new shot; empty when the clip is one shot.
        shift_px: ``(dy, dx)`` content motion in pixels per frame when the whole frame moves (+x right, +y down).
        query: a query that targets ``masks``, or None.
        description: what the clip shows, for test messages and logs.
    """

    frames: list[np.ndarray]
    fps: float = 25.0
    masks: list[np.ndarray] | None = None
    cuts: list[int] = field(default_factory=list)
    shift_px: tuple[float, float] | None = None
    query: str | None = None
    description: str = ""


def colour_rgb(colour: str) -> tuple[int, int, int]:
    """Return the RGB of a supported colour name (see ``COLOURS``) or of a ``'#rrggbb'`` string."""
    name = colour.strip().lower()
    if name in COLOURS:
        return COLOURS[name]
    if len(name) == 7 and name[0] == "#" and all(c in string.hexdigits for c in name[1:]):
        return int(name[1:3], 16), int(name[3:5], 16), int(name[5:7], 16)
    raise ConfigError(f"unsupported colour {colour!r}: use one of {sorted(COLOURS)} or '#rrggbb'")


def near_colour_fraction(image: np.ndarray, rgb: tuple[int, int, int], max_dist: float = NEAR_COLOUR_DIST) -> float:
    """Return the fraction of pixels of ``image`` ``[H, W, 3]`` within ``max_dist`` (RGB 0-255) of ``rgb``."""
    dist = np.linalg.norm(image.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1)
    return float((dist < max_dist).mean())


@functools.cache
def _load(name: str) -> np.ndarray:
    """Load ``skimage.data.<name>()`` as uint8 RGB ``[h, w, 3]`` (read-only: it is shared by the cache)."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if not callable(loader):
        raise ConfigError(f"unknown photo {name!r}: expected a skimage.data image such as 'coffee' or 'astronaut'")
    image = np.asarray(loader())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3])
    image.flags.writeable = False
    return image


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-style resize of uint8 ``[h, w, C]`` to ``size = (H, W)``, returned as uint8."""
    from skimage.transform import resize

    out = resize(image, size, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _photo(name: str, size: tuple[int, int], zoom: float = 1.0, anchor: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Return photo ``name`` scaled to cover ``zoom * size`` and cropped to ``size = (H, W)`` at ``anchor``.

    ``anchor`` is the crop's relative position (0 = top/left, 1 = bottom/right). Shape: ``[H, W, 3]`` uint8.
    """
    image = _load(name)
    scale = zoom * max(size[0] / image.shape[0], size[1] / image.shape[1])
    scaled = _resize(image, (max(size[0], round(image.shape[0] * scale)), max(size[1], round(image.shape[1] * scale))))
    y0 = round(anchor[0] * (scaled.shape[0] - size[0]))
    x0 = round(anchor[1] * (scaled.shape[1] - size[1]))
    return scaled[y0 : y0 + size[0], x0 : x0 + size[1]].copy()


def _background(name: str, size: tuple[int, int], rgbs: list[tuple[int, int, int]]) -> np.ndarray:
    """Return the first crop of photo ``name`` with < 1% of pixels near any of ``rgbs`` (centre crop first)."""
    anchors = [(ay, ax) for ay in (0.0, 0.5, 1.0) for ax in (0.0, 0.5, 1.0)]
    crops = [(1.0, (0.5, 0.5))] + [(zoom, anchor) for zoom in (1.5, 2.0) for anchor in anchors]
    for zoom, anchor in crops:
        image = _photo(name, size, zoom, anchor)
        if all(near_colour_fraction(image, rgb) < MAX_NEAR_FRACTION for rgb in rgbs):
            return image
    raise ConfigError(f"photo {name!r} has no crop free of colours {rgbs}: pick another photo")


def _noisy(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian sensor noise of ``std`` levels to uint8 ``image``; returns uint8 of the same shape."""
    if std <= 0:
        return image.copy()
    return np.clip(np.rint(image + rng.normal(0.0, std, image.shape)), 0, 255).astype(np.uint8)


def _check(n_frames: int, size: tuple[int, int], min_frames: int = 1) -> None:
    if int(n_frames) != n_frames or n_frames < min_frames:
        raise ConfigError(f"n_frames must be an integer >= {min_frames}, got {n_frames!r}")
    if len(size) != 2 or any(int(s) != s or s < 16 for s in size):
        raise ConfigError(f"size must be (H, W) with integers >= 16, got {size!r}")


def _path(rng: np.random.Generator, n_frames: int, lo: np.ndarray, hi: np.ndarray, speed: float) -> np.ndarray:
    """Return centres ``[n_frames, 2]`` (y, x) of a straight path at ``speed`` px/frame inside ``[lo, hi]``.

    A direction is drawn among those whose whole path fits the box; when none fits (a long clip in a small
    frame) the path reflects off the box's sides, so frames around a bounce move less than ``speed``.
    """
    span = hi - lo
    length = speed * (n_frames - 1)
    angles = np.deg2rad(np.arange(0, 360, 5))
    dirs = np.stack([np.sin(angles), np.cos(angles)], axis=1)  # [A, 2] unit (dy, dx)
    fits = np.flatnonzero(np.all(np.abs(dirs) * length <= span, axis=1))
    d = dirs[rng.choice(fits)] if fits.size else dirs[rng.integers(len(dirs))]
    extent = np.abs(d) * length
    free = np.maximum(span - extent, 0.0)
    start = lo + np.where(d >= 0, 0.0, np.minimum(extent, span)) + rng.uniform(0.0, 1.0, 2) * free
    raw = start - lo + np.arange(n_frames)[:, None] * speed * d  # [n, 2], unfolded coordinate
    return lo + span - np.abs(np.mod(raw, 2 * span) - span)  # triangle wave = reflection off the sides


def _paint(
    backgrounds: list[np.ndarray], objects: list[tuple[tuple[int, int, int], np.ndarray, float]]
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Paint discs on per-frame backgrounds.

    Args:
        backgrounds: ``n`` uint8 ``[H, W, 3]`` frames (not modified).
        objects: ``(rgb, centres [n, 2] (y, x), radius)`` per object; later objects occlude earlier ones.

    Returns:
        ``(frames, masks)``: ``n`` uint8 frames and, per object, ``n`` bool ``[H, W]`` masks of its visible pixels.
    """
    h, w = backgrounds[0].shape[:2]
    yy, xx = np.ogrid[:h, :w]
    frames: list[np.ndarray] = []
    masks: list[list[np.ndarray]] = [[] for _ in objects]
    for t, background in enumerate(backgrounds):
        frame = background.copy()
        discs = [(yy - c[t, 0]) ** 2 + (xx - c[t, 1]) ** 2 <= r * r for _, c, r in objects]
        for i, (rgb, _, _) in enumerate(objects):
            frame[discs[i]] = rgb
            later = np.zeros((h, w), bool) if i + 1 == len(discs) else np.logical_or.reduce(discs[i + 1 :])
            masks[i].append(discs[i] & ~later)
        frames.append(frame)
    return frames, masks


def _query(colour: str) -> str | None:
    """Name a painted ball in a query; a '#rrggbb' colour has no word the attribute encoder could parse."""
    return f"where is the {colour.strip().lower()} ball?" if colour.strip().lower() in COLOURS else None


def moving_object(
    colour: str = "red",
    n_frames: int = 40,
    size: tuple[int, int] = (256, 256),
    object_px: int = 48,
    photo: str = "coffee",
    seed: int = 0,
    fps: float = 25.0,
) -> Clip:
    """A solid disc of ``colour`` (diameter ``object_px``) moving in a straight line at 3.5-5.5 px/frame.

    The background is a static crop of ``photo`` with < 1% of pixels within ``NEAR_COLOUR_DIST`` of the colour.
    The disc stays fully inside the frame. ``masks`` are the disc's pixels; ``query`` names the colour.
    """
    _check(n_frames, size, min_frames=2)
    rgb = colour_rgb(colour)
    r = object_px / 2
    if object_px < 4 or object_px + 2 > min(size):
        raise ConfigError(f"object_px must be in [4, {min(size) - 2}] for size {size}, got {object_px}")
    rng = np.random.default_rng(seed)
    centres = _path(rng, n_frames, np.array([r, r]), np.array(size) - 1 - r, rng.uniform(3.5, 5.5))
    frames, (masks,) = _paint([_background(photo, size, [rgb])] * n_frames, [(rgb, centres, r)])
    return Clip(frames, fps, masks, query=_query(colour), description=f"{colour} disc moving over {photo}")


def two_objects(
    colours: tuple[str, str] = ("red", "blue"),
    n_frames: int = 24,
    size: tuple[int, int] = (256, 256),
    object_px: int = 40,
    photo: str = "coffee",
    seed: int = 0,
    fps: float = 25.0,
) -> tuple[Clip, Clip]:
    """Two discs of different colours moving over one photo: the first in the top half, the second below.

    Returns two Clips sharing the same ``frames`` list: each carries the masks and query of one object, so
    two queries over one video can be compared against their own ground truth.
    """
    _check(n_frames, size, min_frames=2)
    rgbs = [colour_rgb(c) for c in colours]
    r = object_px / 2
    if object_px < 4 or object_px + 2 > min(size[0] // 2, size[1]):
        raise ConfigError(f"object_px must be in [4, {min(size[0] // 2, size[1]) - 2}] for size {size}")
    rng = np.random.default_rng(seed)
    half = size[0] // 2
    boxes = [
        (np.array([r, r]), np.array([half - 1 - r, size[1] - 1 - r])),
        (np.array([half + r, r]), np.array([size[0] - 1 - r, size[1] - 1 - r])),
    ]
    objects = [(rgb, _path(rng, n_frames, lo, hi, rng.uniform(3.5, 5.5)), r) for rgb, (lo, hi) in zip(rgbs, boxes)]
    frames, masks = _paint([_background(photo, size, rgbs)] * n_frames, objects)
    described = f"{colours[0]} and {colours[1]} discs moving over {photo}"
    first, second = (Clip(frames, fps, m, query=_query(c), description=described) for c, m in zip(colours, masks))
    return first, second


def text_region(
    n_frames: int = 24,
    size: tuple[int, int] = (256, 256),
    photo: str = "astronaut",
    drift: tuple[int, int] = (0, 1),
    noise_std: float = 1.5,
    seed: int = 0,
    fps: float = 25.0,
) -> Clip:
    """A patch of printed text (``skimage.data.page``) pasted on a photo, drifting ``drift`` px/frame (dy, dx).

    The patch covers about a fifth of the frame and stays inside it; every frame gets sensor noise of
    ``noise_std`` levels. ``masks`` are the patch's pixels; ``query`` is "text".
    """
    _check(n_frames, size)
    h, w = size
    page = _load("page")
    aspect = page.shape[1] / page.shape[0]
    pw = min(round((0.2 * h * w * aspect) ** 0.5), round(0.9 * w))
    ph = min(round(pw / aspect), round(0.9 * h))
    patch = _resize(page, (ph, pw))
    travel = np.abs(np.asarray(drift)) * (n_frames - 1)
    if np.any(travel > (h - ph, w - pw)):
        raise ConfigError(f"drift {drift} moves the text patch out of a {size} frame in {n_frames} frames")
    # Centre the whole trajectory so the patch sits mid-frame on average.
    start = (np.array([h - ph, w - pw]) - np.asarray(drift) * (n_frames - 1)) // 2
    rng = np.random.default_rng(seed)
    background = _photo(photo, size)
    frames, masks = [], []
    for t in range(n_frames):
        y0, x0 = start + np.asarray(drift) * t
        frame = background.copy()
        frame[y0 : y0 + ph, x0 : x0 + pw] = patch
        mask = np.zeros(size, bool)
        mask[y0 : y0 + ph, x0 : x0 + pw] = True
        frames.append(_noisy(frame, noise_std, rng))
        masks.append(mask)
    return Clip(frames, fps, masks, query="text", description=f"printed text drifting {drift} px/frame over {photo}")


def _window_frames(photo: str, size: tuple[int, int], n_frames: int, shift: tuple[int, int]) -> list[np.ndarray]:
    """Crops of an enlarged photo whose content moves by exactly ``shift = (dy, dx)`` px per frame."""
    dy, dx = shift
    h, w = size
    canvas = _photo(photo, (h + abs(dy) * (n_frames - 1), w + abs(dx) * (n_frames - 1)))
    # The window moves opposite to the content: content moving right means the window slides left.
    y_start = max(dy, 0) * (n_frames - 1)
    x_start = max(dx, 0) * (n_frames - 1)
    return [
        canvas[y_start - t * dy : y_start - t * dy + h, x_start - t * dx : x_start - t * dx + w].copy()
        for t in range(n_frames)
    ]


def _integer_shift(shift: tuple[int, int]) -> tuple[int, int]:
    if len(shift) != 2 or any(int(s) != s for s in shift):
        raise ConfigError(f"shift must be two integers (dy, dx) so frames shift exactly, got {shift!r}")
    return int(shift[0]), int(shift[1])


def pan(
    n_frames: int = 40,
    size: tuple[int, int] = (256, 256),
    shift: tuple[int, int] = (0, 4),
    photo: str = "astronaut",
    fps: float = 25.0,
) -> Clip:
    """A camera pan: content moves by exactly ``shift = (dy, dx)`` px per frame (+x right, +y down); no noise."""
    _check(n_frames, size)
    dy, dx = _integer_shift(shift)
    frames = _window_frames(photo, size, n_frames, (dy, dx))
    return Clip(frames, fps, shift_px=(float(dy), float(dx)), description=f"pan over {photo}, content {shift} px/frame")


def shifted(
    n_frames: int = 12,
    size: tuple[int, int] = (256, 256),
    shift: tuple[int, int] = (0, 8),
    photo: str = "chelsea",
    fps: float = 25.0,
) -> Clip:
    """Like :func:`pan`, with a default content shift of one 8-px cell per frame, for flow tests."""
    return pan(n_frames, size, shift, photo, fps)


def fade(
    n_frames: int = 50,
    size: tuple[int, int] = (256, 256),
    photo_a: str = "coffee",
    photo_b: str = "astronaut",
    hold: int = 10,
    fps: float = 25.0,
) -> Clip:
    """``hold`` frames of ``photo_a``, a linear cross-fade over ``n_frames - 2 * hold`` frames, ``hold`` of ``photo_b``.

    A slow fade is not a cut: ``cuts`` is empty.
    """
    _check(n_frames, size)
    if hold < 0 or n_frames - 2 * hold < 1:
        raise ConfigError(f"hold={hold} leaves no fade frames in a {n_frames}-frame clip")
    a = _photo(photo_a, size).astype(np.float32)
    b = _photo(photo_b, size).astype(np.float32)
    # Frame hold - 1 is the last pure A and frame n - hold the first pure B.
    alphas = np.clip((np.arange(n_frames) - hold + 1) / (n_frames - 2 * hold + 1), 0.0, 1.0)
    frames = [np.rint((1 - al) * a + al * b).astype(np.uint8) for al in alphas]
    return Clip(frames, fps, description=f"cross-fade {photo_a} -> {photo_b} over {n_frames - 2 * hold} frames")


def static(
    n_frames: int = 30,
    size: tuple[int, int] = (256, 256),
    photo: str = "camera",
    noise_std: float = 1.5,
    seed: int = 0,
    fps: float = 25.0,
) -> Clip:
    """A static shot of ``photo`` with Gaussian sensor noise of ``noise_std`` levels per frame."""
    _check(n_frames, size)
    rng = np.random.default_rng(seed)
    image = _photo(photo, size)
    frames = [_noisy(image, noise_std, rng) for _ in range(n_frames)]
    return Clip(frames, fps, shift_px=(0.0, 0.0), description=f"static {photo}, noise std {noise_std}")


def cuts_clip(
    n_frames: int = 60,
    size: tuple[int, int] = (256, 256),
    photos: tuple[str, ...] = ("coffee", "astronaut", "rocket"),
    seed: int = 0,
    fps: float = 25.0,
) -> Clip:
    """Equal-length shots of different photos joined by hard cuts; each shot pans 1 px/frame with noise std 1.5.

    ``cuts`` are the first frames of shots 2.. (``round(i * n_frames / len(photos))``).
    """
    _check(n_frames, size, min_frames=2 * len(photos))
    rng = np.random.default_rng(seed)
    bounds = [round(i * n_frames / len(photos)) for i in range(len(photos) + 1)]
    directions = [(0, 1), (0, -1), (1, 0), (-1, 0)]
    frames = []
    for photo, start, stop in zip(photos, bounds[:-1], bounds[1:]):
        shift = directions[rng.integers(len(directions))]
        frames += [_noisy(f, 1.5, rng) for f in _window_frames(photo, size, stop - start, shift)]
    return Clip(frames, fps, cuts=bounds[1:-1], description=f"hard cuts between {', '.join(photos)}")


def write_clip(clip: Clip, path: str | os.PathLike, *, crf: int = 18, comment: str | None = None) -> Path:
    """Encode ``clip`` with PyAV (libx264, yuv420p, frame ``i`` at pts ``i`` in a ``1 / fps`` time base).

    The frame rate is kept as a fraction (29.97 stays 2997/100). Frames must share one even ``[H, W]``
    (yuv420p halves the chroma planes). ``comment`` goes into the container's metadata.
    """
    import av

    h, w = clip.frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ConfigError(f"frame size {w}x{h} must be even in both dimensions for yuv420p")
    if any(f.shape != (h, w, 3) or f.dtype != np.uint8 for f in clip.frames):
        raise ConfigError(f"every frame must be uint8 [{h}, {w}, 3] like the first")
    rate = Fraction(clip.fps).limit_denominator(1001)
    path = Path(path)
    with av.open(str(path), "w") as container:
        if comment is not None:
            container.metadata["comment"] = comment
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        for i, rgb in enumerate(clip.frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def cache_dir() -> Path:
    """The cache folder: ``$ARR_COC_STREAM_CACHE`` or ``~/.cache/arr_coc_stream``."""
    return Path(os.environ.get("ARR_COC_STREAM_CACHE") or Path.home() / ".cache" / "arr_coc_stream")


def _valid_default(path: Path) -> bool:
    """True if ``path`` is a complete default clip written by this version of the generator."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return container.metadata.get("comment") == _DEFAULT_CLIP_TAG and stream.frames == _DEFAULT_CLIP_FRAMES
    except (OSError, IndexError, av.FFmpegError):
        return False


def default_clip() -> tuple[Path, str]:
    """Return ``(path, query)`` of the README's demo clip, building it into :func:`cache_dir` on first use.

    6 s at 25 fps, 640x360: a red ball crosses the frame at 4 px/frame over ``chelsea`` and keeps moving
    across a hard cut (frame 75) into ``rocket``, so the demo shows both query tracking and a cut reset.
    Both photos are free of red even in Lab a*b* (coffee's saucer and the astronaut's suit are reddish).
    """
    path = cache_dir() / DEFAULT_CLIP_NAME
    query = "where is the red ball?"
    if path.is_file() and _valid_default(path):
        return path, query
    size, n, r = (360, 640), _DEFAULT_CLIP_FRAMES, 28.0
    rgb = COLOURS["red"]
    rng = np.random.default_rng(0)
    centres = _path(rng, n, np.array([r, r]), np.array(size) - 1 - r, 4.0)
    backgrounds = [_background("chelsea", size, [rgb])] * (n // 2) + [_background("rocket", size, [rgb])] * (n - n // 2)
    frames, _ = _paint(backgrounds, [(rgb, centres, r)])
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a concurrent reader never sees a half-written file.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.mp4")
    try:
        write_clip(Clip(frames, 25.0, cuts=[n // 2]), tmp, comment=_DEFAULT_CLIP_TAG)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, query
