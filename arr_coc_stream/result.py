"""Per-frame results (DESIGN.md section 9)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
        query_terms: words of the query the encoder used.
        timings: milliseconds per stage.
        reset: the temporal state started over at this frame (first frame, gap, resolution change, cut).
        source_size: (H, W) of the source frame.
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
    timings: dict[str, float] = field(default_factory=dict)
    reset: bool = False
    source_size: tuple[int, int] = (0, 0)

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
            "selected": [[int(i // gw), int(i % gw), round(float(s), 5)]
                         for i, s in zip(self.indices[sel], self.scores[sel])],
            "crops": [[int(i // gw), int(i % gw), int(b), int(lv), [int(v) for v in w]]
                      for i, b, lv, w in zip(self.indices[crops], self.budgets[crops], self.lod[crops],
                                             self.windows[crops])],
            "total_budget": self.total_budget,
            "k": {"indices": self.indices.tolist(), "scores": np.round(self.scores, 5).tolist(),
                  "valid": self.valid.tolist(), "budgets": self.budgets.tolist(), "lod": self.lod.tolist(),
                  "windows": self.windows.tolist()},
            "relevance": np.round(self.relevance, 4).tolist(),
            "query_terms": list(self.query_terms),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrameResult":
        """Inverse of :meth:`to_dict` (scores and relevance rounded as stored)."""
        grid = tuple(d["grid"])
        size = tuple(d["source_size"])
        k = d["k"]
        indices = np.asarray(k["indices"], dtype=np.int64)
        return cls(
            index=d["index"], time=d["time"], relevance=np.asarray(d["relevance"], dtype=np.float32),
            indices=indices, scores=np.asarray(k["scores"], dtype=np.float32),
            valid=np.asarray(k["valid"], dtype=bool), budgets=np.asarray(k["budgets"], dtype=np.int32),
            lod=np.asarray(k["lod"], dtype=np.int32),
            boxes=cell_boxes(indices, grid, size),  # type: ignore[arg-type]
            windows=np.asarray(k["windows"], dtype=np.int32).reshape(-1, 4),
            cut=d["cut"], scene_score=d["scene_score"], motion=d["motion"],
            query_terms=tuple(d["query_terms"]), timings=dict(d["timings"]), reset=d["reset"],
            source_size=size,  # type: ignore[arg-type]
        )


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

