"""Synthetic 256x256 stimuli for the texture channel tests, and a helper that runs the texture stage on them.

Every frame is uint8 [256, 256, 3], as a decoder would deliver it; :func:`run_texture` converts it to the
float [1, 3, 256, 256] the graph feeds the stage and calls the stage the way ``FrameGraph.step`` does
(32x32 grid, 8-px cells, 6 clusters); CLIP features become channels clip_0..clip_15 the way the clip head's
scorer makes them (their coordinates on a fixed basis). Grid cell (row i, column j) covers pixels
[8i, 8i + 8) x [8j, 8j + 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from arr_coc_stream.channels import CHANNELS
from arr_coc_stream.texture import grid_positions, luminance, motion_channel, texture

SIZE, CELL, GRID = 256, 8, 32
CLUSTERS = 6
GREY = 0.5
# A stand-in CLIP model's fixed basis: 16 orthonormal directions of a 24-d joint space (the tiny test model's D).
CLIP_DIM = 24
CLIP_BASIS = torch.linalg.qr(torch.randn(CLIP_DIM, 16, generator=torch.Generator().manual_seed(3)))[0].t().contiguous()


def clip_features(direction: np.ndarray, rows: tuple[int, int] = (0, GRID)) -> np.ndarray:
    """Dense CLIP features [D, 32, 32]: the unit ``direction`` [D] on grid rows [r0, r1), zero elsewhere."""
    feat = np.zeros((CLIP_DIM, GRID, GRID), np.float32)
    feat[:, rows[0] : rows[1]] = (direction / np.linalg.norm(direction))[:, None, None]
    return feat


def _u8(x: np.ndarray) -> np.ndarray:
    """Float image in [0, 1], [H, W] or [H, W, 3] -> uint8 [H, W, 3]."""
    x = np.clip(np.round(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=-1) if x.ndim == 2 else x


def flat(level: float = GREY) -> np.ndarray:
    """A uniform grey frame."""
    return _u8(np.full((SIZE, SIZE), level))


def solid(r: float, g: float, b: float) -> np.ndarray:
    """A uniform colour frame."""
    return _u8(np.broadcast_to(np.array([r, g, b]), (SIZE, SIZE, 3)))


def noise(std: float, level: float = GREY, seed: int = 0) -> np.ndarray:
    """Flat grey plus i.i.d. Gaussian luminance noise."""
    rng = np.random.default_rng(seed)
    return _u8(level + std * rng.standard_normal((SIZE, SIZE)))


def step_edge(low: float = 0.1, high: float = 0.9, at: int = SIZE // 2) -> np.ndarray:
    """A vertical step edge: ``low`` left of column ``at``, ``high`` from it on (the cell 15 | 16 border)."""
    x = np.full((SIZE, SIZE), low)
    x[:, at:] = high
    return _u8(x)


def thin_lines(contrast: float = 0.05, period: int = 4, offset: int = 1) -> np.ndarray:
    """Vertical 1-px bright lines at least ``contrast`` above flat grey, one every ``period`` pixels.

    Built in integer levels (128 + ceil(contrast * 255)) so uint8 rounding never lowers the contrast.
    """
    x = np.full((SIZE, SIZE), round(GREY * 255), dtype=np.int64)
    x[:, offset::period] += math.ceil(contrast * 255)
    return np.repeat(x.astype(np.uint8)[..., None], 3, axis=-1)


def checkerboard(square: int = 1) -> np.ndarray:
    """Black and white squares of ``square`` pixels (a 1-px checkerboard is all Laplacian)."""
    yy, xx = np.mgrid[:SIZE, :SIZE] // square
    return _u8(((yy + xx) % 2).astype(np.float64))


def gradient() -> np.ndarray:
    """A smooth horizontal ramp from black to white."""
    return _u8(np.broadcast_to(np.linspace(0.0, 1.0, SIZE), (SIZE, SIZE)))


def blocks(square: int = 4, seed: int = 0) -> np.ndarray:
    """Random black-or-white ``square``-px blocks: strong texture everywhere."""
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 2, (SIZE // square, SIZE // square)).astype(np.float64)
    return _u8(np.kron(b, np.ones((square, square))))


def blob(radius: float = 8.0, centre: tuple[int, int] = (128, 128), level: float = 1.0) -> np.ndarray:
    """A single small bright disc on flat grey."""
    yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
    x = np.full((SIZE, SIZE), GREY)
    x[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = level
    return _u8(x)


def band(rows: tuple[int, int], colour=(1.0, 0.0, 0.0), background=(0.0, 0.0, 1.0)) -> np.ndarray:
    """A full-width band of cell rows ``rows`` (start, stop) in ``colour`` on ``background``."""
    x = np.broadcast_to(np.array(background, dtype=np.float64), (SIZE, SIZE, 3)).copy()
    x[rows[0] * CELL : rows[1] * CELL] = colour
    return _u8(x)


def page_text(
    rows: tuple[int, int] = (20, 84), cols: tuple[int, int] = (40, 168), at: tuple[int, int] = (96, 64)
) -> np.ndarray:
    """Real printed text: a crop of scikit-image's ``page()`` at native scale pasted on flat grey.

    ``at`` is cell-aligned (multiples of 8), so the text covers cells [at / 8, (at + crop) / 8).
    """
    from skimage.data import page

    crop = page()[rows[0] : rows[1], cols[0] : cols[1]]
    x = np.full((SIZE, SIZE), float(np.median(crop)) / 255.0)
    x[at[0] : at[0] + crop.shape[0], at[1] : at[1] + crop.shape[1]] = crop / 255.0
    return _u8(x)


def stripes(
    dark: float, light: float, width: int = 2, period: int = 6, box: tuple[int, int, int, int] = (96, 64, 160, 192)
) -> np.ndarray:
    """Parallel horizontal ``width``-px dark lines on ``light`` inside ``box`` (y0, x0, y1, x1), on ``light``."""
    x = np.full((SIZE, SIZE), light)
    y0, x0, y1, x1 = box
    for start in range(y0, y1, period):
        x[start : min(start + width, y1), x0:x1] = dark
    return _u8(x)


def cells(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Boolean [32, 32] mask of grid rows [r0, r1) and columns [c0, c1)."""
    m = np.zeros((GRID, GRID), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


@dataclass
class Scene:
    """Everything the stage sees for one frame: the frame, the previous frame and the graph's side inputs."""

    rgb: np.ndarray
    prev: np.ndarray | None = None  # previous frame; None means "the same frame" (no motion)
    fresh: bool = False  # the state starts over (reset or cut)
    caches: np.ndarray = field(default_factory=lambda: np.zeros((3, GRID, GRID), np.float32))
    clip: np.ndarray | None = None  # dense CLIP features [D, 32, 32] (projected on CLIP_BASIS)


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0


def run_texture(scene: Scene) -> dict[str, np.ndarray]:
    """The texture of ``scene`` as ``{channel name: [32, 32] float64}``, for every registry channel."""
    rgb = to_tensor(scene.rgb)
    luma = luminance(rgb)
    prev_luma = luma if scene.prev is None else luminance(to_tensor(scene.prev))
    motion = motion_channel(luma, prev_luma, torch.tensor([scene.fresh]), CELL)
    caches = torch.as_tensor(scene.caches, dtype=torch.float32)[None]
    pos, ecc = grid_positions((GRID, GRID))
    clip = None if scene.clip is None else torch.einsum("kd,bdhw->bkhw", CLIP_BASIS, torch.as_tensor(scene.clip)[None])
    with torch.no_grad():
        tex = texture(rgb, luma, motion, caches, pos, ecc, cell_px=CELL, clusters=CLUSTERS, head_channels=clip)
    assert tex.shape == (1, len(CHANNELS), GRID, GRID), tex.shape
    return {name: tex[0, ch.index].double().numpy() for name, ch in CHANNELS.items()}
