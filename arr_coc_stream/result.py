"""Per-frame results (DESIGN.md section 9): :class:`FrameResult`, its foveal :class:`Crop` images, cell boxes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .errors import ConfigError

# Source pixels per vision token side of the downstream VLM: Qwen2-VL's 2 x 2 merged patches of 14 px. A crop
# with budget n^2 tokens is n * PATCH_PX pixels per side (FrameResult.crops); the graph never depends on it.
PATCH_PX = 28

if TYPE_CHECKING:
    from .sources.base import Frame


@dataclass
class FrameResult:
    """What the engine decided for one frame.

    Attributes:
        index: source frame index (gaps in the sequence show dropped frames).
        time: seconds from the source's timestamps.
        relevance: [gh, gw] float32 in [0, 1], the relevance map.
        indices: [K] int64 row-major cell indices, in descending score order.
        scores: [K] float32 relevance of those cells.
        valid: [K] bool, the cell is selected as a token (in the top K and above the relevance floor).
        budgets: [K] int32 foveal token budget (64..400) of the cells given a crop, 0 otherwise.
        lod: [K] int32 level of detail of the crop (0 finest .. 3), -1 where the budget is 0.
        boxes: [K, 4] int32 each cell's region in source pixels (x0, y0, x1, y1), end-exclusive.
        windows: [K, 4] int32 each cell's foveal crop window in source pixels (x0, y0, x1, y1).
        cut: a scene cut starts at this frame.
        scene_score: cut detector score in [0, 1].
        motion: mean motion channel over the grid, in [0, 1].
        query_terms: words of the query the encoder used (understood).
        query_ignored: words of the query the encoder could not use (stop-words aside); see
            :class:`~arr_coc_stream.query.QueryWarning`.
        timings: milliseconds per stage.
        reset: the temporal state started over at this frame (first frame, gap, resolution change, cut).
        source_size: (H, W) of the source frame.
        gap: seconds of stream time lost just before this frame (live sources: a drop and reconnect), else 0.
        dropped: frames known lost just before this frame (live sources), else 0.
        keyframe: with the CLIP encoder, why dense CLIP features were computed for this frame (``"first"``,
            ``"reset"``, ``"cut"`` (also when the interval or motion was due on a cut frame), ``"interval"``,
            ``"motion"``); None when the cached ones were warped instead.
    """

    index: int
    time: float
    relevance: np.ndarray
    indices: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    budgets: np.ndarray
    lod: np.ndarray
    boxes: np.ndarray
    windows: np.ndarray
    cut: bool
    scene_score: float
    motion: float
    query_terms: tuple[str, ...] = ()
    query_ignored: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    reset: bool = False
    source_size: tuple[int, int] = (0, 0)
    gap: float = 0.0
    dropped: int = 0
    keyframe: str | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.relevance.shape[0]), int(self.relevance.shape[1])

    @property
    def selected(self) -> np.ndarray:
        """Row-major indices of the selected cells. [n] int64, n <= K."""
        return self.indices[self.valid]

    @property
    def selected_cells(self) -> np.ndarray:
        """(y, x) grid coordinates of the selected cells. [n, 2] int64."""
        sel = self.selected
        return np.stack([sel // self.grid[1], sel % self.grid[1]], axis=1)

    @property
    def total_budget(self) -> int:
        return int(self.budgets.sum())

    def selection_mask(self) -> np.ndarray:
        """[gh, gw] bool, True at selected cells."""
        mask = np.zeros(self.grid[0] * self.grid[1], dtype=bool)
        mask[self.selected] = True
        return mask.reshape(self.grid)

    def crops(self, frame: np.ndarray | Frame, patch_px: int = PATCH_PX) -> list[Crop]:
        """Cut each foveal crop out of the original frame at its level of detail.

        A crop with budget b = n^2 tokens is its window resized to ``n * patch_px`` pixels per side (n x n
        tokens of ``patch_px``), each side capped at the window's own size in source pixels: a crop is never
        upsampled beyond the source. The sides are sized independently, so a window larger than the budget's
        side and not square (a non-square frame on a square grid) is stretched toward the n x n tokens it pays for.

        Args:
            frame: the full-resolution frame, [H, W, 3] uint8 RGB with (H, W) == ``source_size``, or a
                :class:`~arr_coc_stream.sources.Frame` read with ``keep_full=True``.
            patch_px: source pixels per token side of the downstream vision model.

        Returns:
            One :class:`Crop` per cell with a budget, in score order.

        Raises:
            ConfigError: the frame is not at ``source_size``.
        """
        image = frame if isinstance(frame, np.ndarray) else (frame.full if frame.full is not None else frame.rgb)
        if image.shape[:2] != tuple(self.source_size):
            raise ConfigError(f"crops need the full-resolution frame {self.source_size}, got {image.shape[:2]}")
        gw = self.grid[1]
        out = []
        for i in np.flatnonzero(self.budgets > 0):
            x0, y0, x1, y1 = (int(v) for v in self.windows[i])
            budget = int(self.budgets[i])
            side = int(round(budget**0.5)) * patch_px
            size = (min(side, x1 - x0), min(side, y1 - y0))  # (w, h), never above the source's pixels
            window = image[y0:y1, x0:x1]
            if size != (x1 - x0, y1 - y0):
                window = cv2.resize(window, size, interpolation=cv2.INTER_AREA)
            cell = (int(self.indices[i] // gw), int(self.indices[i] % gw))
            out.append(Crop(np.ascontiguousarray(window), (x0, y0, x1, y1), cell, budget, int(self.lod[i])))
        return out

    def position_ids(self, t: int = 0, start: int = 0) -> np.ndarray:
        """(t, y, x) rotary position ids of the selected cells, as Qwen2-VL's M-RoPE places image tokens.

        Qwen2-VL merges 2x2 patches of 14 px into one 28 px token (``patch_px``); an image whose merged token
        grid is this cell grid gets ids (start + t, start + y, start + x) for its token at row y, column x,
        where ``start`` is the sequence position where the image begins (the text tokens before it) and ``t``
        the temporal patch index within a video (0 for an image).

        Args:
            t: temporal index of this frame. start: position of the first vision token.

        Returns:
            [3, n] int64, columns aligned with :attr:`selected` (score order; sort by :attr:`selected` for
            raster order).
        """
        yx = self.selected_cells  # [n, 2]
        return np.concatenate([np.full((1, len(yx)), start + t, dtype=np.int64), start + yx.T.astype(np.int64)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (the JSONL schema's frame object)."""
        gw = self.grid[1]
        sel = self.valid
        crops = self.budgets > 0
        return {
            "index": self.index,
            "time": round(self.time, 6),
            "cut": self.cut,
            "scene_score": round(self.scene_score, 5),
            "motion": round(self.motion, 5),
            "reset": self.reset,
            "source_size": list(self.source_size),
            "grid": list(self.grid),
            "selected": [
                [int(i // gw), int(i % gw), round(float(s), 5)] for i, s in zip(self.indices[sel], self.scores[sel])
            ],
            "crops": [
                [int(i // gw), int(i % gw), int(b), int(lv), [int(v) for v in w]]
                for i, b, lv, w in zip(self.indices[crops], self.budgets[crops], self.lod[crops], self.windows[crops])
            ],
            "total_budget": self.total_budget,
            "k": {
                "indices": self.indices.tolist(),
                "scores": np.round(self.scores, 5).tolist(),
                "valid": self.valid.tolist(),
                "budgets": self.budgets.tolist(),
                "lod": self.lod.tolist(),
                "windows": self.windows.tolist(),
            },
            "relevance": np.round(self.relevance, 4).tolist(),
            "query_terms": list(self.query_terms),
            "query_ignored": list(self.query_ignored),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "gap": round(self.gap, 6),
            "dropped": self.dropped,
            "keyframe": self.keyframe,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameResult:
        """Inverse of :meth:`to_dict` (scores and relevance rounded as stored; a ``None`` number, JSON's ``null``
        for a NaN, reads back as NaN)."""
        grid = tuple(d["grid"])
        size = tuple(d["source_size"])
        k = d["k"]
        indices = np.asarray(k["indices"], dtype=np.int64)
        return cls(
            index=d["index"],
            time=_number(d["time"]),
            relevance=np.asarray(d["relevance"], dtype=np.float32),
            indices=indices,
            scores=np.asarray(k["scores"], dtype=np.float32),
            valid=np.asarray(k["valid"], dtype=bool),
            budgets=np.asarray(k["budgets"], dtype=np.int32),
            lod=np.asarray(k["lod"], dtype=np.int32),
            boxes=cell_boxes(indices, grid, size),
            windows=np.asarray(k["windows"], dtype=np.int32).reshape(-1, 4),
            cut=d["cut"],
            scene_score=_number(d["scene_score"]),
            motion=_number(d["motion"]),
            query_terms=tuple(d["query_terms"]),
            query_ignored=tuple(d.get("query_ignored", ())),
            timings=dict(d["timings"]),
            reset=d["reset"],
            source_size=size,
            gap=d.get("gap", 0.0),
            dropped=d.get("dropped", 0),  # absent from files of the first writer
            keyframe=d.get("keyframe"),
        )


@dataclass(frozen=True, eq=False)  # eq=False: images compare by identity
class Crop:
    """One foveal crop of a frame (see :meth:`FrameResult.crops`).

    Attributes:
        image: [h, w, 3] uint8 RGB, each side min(n * patch_px, the window's side in source pixels).
        box: the window in source pixels (x0, y0, x1, y1), end-exclusive.
        cell: (y, x) grid cell the crop is centred on.
        budget: tokens, n^2 with n in 8..20.
        lod: level of detail, 0 (finest) .. 3.
    """

    image: np.ndarray
    box: tuple[int, int, int, int]
    cell: tuple[int, int]
    budget: int
    lod: int


def _number(value: float | None) -> float:
    return float("nan") if value is None else value


def cell_boxes(indices: np.ndarray, grid: tuple[int, int], source_size: tuple[int, int]) -> np.ndarray:
    """Source-pixel box (x0, y0, x1, y1) of each cell. [K] -> [K, 4] int32."""
    gw = grid[1]
    y, x = indices // gw, indices % gw
    return cells_to_pixels(np.stack([y, x, y + 1, x + 1], axis=-1), grid, source_size)


def cells_to_pixels(cells: np.ndarray, grid: tuple[int, int], source_size: tuple[int, int]) -> np.ndarray:
    """Cell-coordinate boxes (y0, x0, y1, x1) to source-pixel boxes (x0, y0, x1, y1). [..., 4] -> [..., 4]."""
    gh, gw = grid
    h, w = source_size
    y0, x0, y1, x1 = (cells[..., i].astype(np.float64) for i in range(4))
    px = np.stack([np.floor(x0 * w / gw), np.floor(y0 * h / gh), np.ceil(x1 * w / gw), np.ceil(y1 * h / gh)], -1)
    return px.astype(np.int32)
