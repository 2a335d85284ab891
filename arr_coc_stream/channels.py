"""The 40-channel texture registry (DESIGN.md section 4).

Code addresses channels by name through :data:`CHANNELS`; no other file hard-codes an index. Each channel
declares its value range (fixed scales, never per-frame min-max) and the stages that read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Channel:
    """One texture channel: its index in the array, declared range and the stages that read it."""

    name: str
    index: int
    low: float
    high: float
    readers: tuple[str, ...]
    meaning: str


_SPECS: list[tuple[str, float, float, tuple[str, ...], str]] = [
    ("r", 0, 1, ("participatory", "overlay"), "cell mean red"),
    ("g", 0, 1, ("participatory", "overlay"), "cell mean green"),
    ("b", 0, 1, ("participatory", "overlay"), "cell mean blue"),
    ("edge", 0, 1, ("propositional", "cut"), "Sobel magnitude of luminance, cell mean, tanh scale"),
    ("stroke", 0, 1, ("propositional", "text"), "thin-structure response: max(top-hat, black-hat) / local contrast"),
    ("highpass", 0, 1, ("propositional",), "|Laplacian| of luminance, cell mean, tanh scale"),
    ("flatness", 0, 1, ("propositional",), "1 - normalised local std of luminance"),
    ("motion", 0, 1, ("perspectival", "boost"), "|I_t - I_(t-1)| of luminance, cell mean; 0 on a fresh state"),
    ("saliency", 0, 1, ("perspectival",), "centre-surround contrast on the work-resolution pyramid"),
    ("pos_x", 0, 1, ("participatory",), "cell centre x / width"),
    ("pos_y", 0, 1, ("participatory",), "cell centre y / height"),
    ("eccentricity", 0, 1, ("perspectival",), "distance from the image centre / 0.7071"),
    ("cluster_id", 0, 1, ("attending",), "k-means cluster id / (clusters - 1); not stable across frames"),
    ("cluster_dist", 0, 1, ("propositional",), "distance to the cluster's spatial centroid / grid diagonal"),
    ("cluster_size", 0, 1, ("propositional",), "cells in the cell's cluster / cells"),
    ("prev_relevance", 0, 1, ("realizing",), "cached unboosted relevance warped to this frame"),
    ("prev_saliency", 0, 1, ("perspectival",), "previous saliency warped to this frame"),
    ("fixation", 0, 1, ("attending",), "EMA of past selections, warped"),
    *[(f"clip_{i}", -1, 1, ("clustering",), f"dense CLIP feature on basis direction {i}; zeros without CLIP")
      for i in range(16)],
    ("edge_distance", 0, 1, ("propositional",), "distance to the nearest strong-edge cell / grid diagonal"),
    ("flow_x", -1, 1, ("realizing", "perspectival"), "coarse motion in cells per frame / search radius"),
    ("flow_y", -1, 1, ("realizing", "perspectival"), "coarse motion in cells per frame / search radius"),
    ("lab_a", 0, 1, ("participatory",), "a* of the cell mean colour, (a + 128) / 255"),
    ("lab_b", 0, 1, ("participatory",), "b* of the cell mean colour, (b + 128) / 255"),
    ("text", 0, 1, ("participatory",), "stroke density with mixed edge orientations"),
]

CHANNELS: dict[str, Channel] = {
    name: Channel(name, i, float(lo), float(hi), readers, meaning)
    for i, (name, lo, hi, readers, meaning) in enumerate(_SPECS)
}
NUM_CHANNELS = len(CHANNELS)
CLIP_CHANNELS = tuple(f"clip_{i}" for i in range(16))


def idx(name: str) -> int:
    """Index of channel ``name`` in the texture array."""
    return CHANNELS[name].index


def registry() -> list[dict[str, object]]:
    """The registry as plain data, for export metadata and JSONL headers."""
    return [
        {"name": c.name, "index": c.index, "range": [c.low, c.high], "readers": list(c.readers)}
        for c in CHANNELS.values()
    ]
