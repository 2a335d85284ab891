"""The texture channel registry (DESIGN.md section 4).

Code addresses channels by name through :data:`CHANNELS`; no other file hard-codes an index. Each channel
declares its value range (fixed scales, never per-frame min-max) and the stages that read it from the texture
array. The readers are checked by ``tests/test_graph.py``, which perturbs each channel and watches which stage
outputs move:

- ``propositional``, ``perspectival``: the knowing stage's query-free scorers;
- ``participatory``: the query head's scorer (the attributes head reads the channels its text, motion and position
  words weigh; its colour words read the frame's pixels, not a channel);
- ``clustering``: the k-means that writes the cluster channels (colour, and clip_* when the head supplies them);
- ``balancing``: the focus/diversify bonus per cluster;
- ``realizing.post``: the blend with the cached relevance and the motion boost;
- ``attending``: the explore slots' inhibition of return.

The coarse flow is not a channel: realizing.pre computes it before the texture and uses it to warp the caches,
and no stage after the texture reads it.
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
    ("r", 0, 1, ("clustering",), "cell mean red"),
    ("g", 0, 1, ("clustering",), "cell mean green"),
    ("b", 0, 1, ("clustering",), "cell mean blue"),
    (
        "edge",
        0,
        1,
        ("propositional",),
        "Sobel magnitude of luminance, cell mean, tanh scale (edge_distance grows from it)",
    ),
    (
        "stroke",
        0,
        1,
        ("propositional", "participatory"),
        "thin-structure response: max(top-hat, black-hat) / local contrast (text grows from it)",
    ),
    ("highpass", 0, 1, ("propositional",), "|Laplacian| of luminance, cell mean, tanh scale"),
    ("flatness", 0, 1, ("propositional",), "1 - normalised local std of luminance"),
    (
        "motion",
        0,
        1,
        ("perspectival", "participatory", "realizing.post"),
        "|I_t - I_(t-1)| of luminance, cell mean; 0 on a fresh state",
    ),
    ("saliency", 0, 1, ("perspectival",), "centre-surround contrast on the work-resolution pyramid"),
    ("pos_x", 0, 1, ("participatory",), "cell centre x / width"),
    ("pos_y", 0, 1, ("participatory",), "cell centre y / height"),
    ("eccentricity", 0, 1, ("perspectival", "participatory"), "distance from the image centre / 0.7071"),
    ("cluster_id", 0, 1, ("balancing",), "k-means cluster id / (clusters - 1); not stable across frames"),
    ("cluster_dist", 0, 1, ("propositional",), "distance to the cluster's spatial centroid / grid diagonal"),
    ("cluster_size", 0, 1, ("propositional",), "cells in the cell's cluster / cells"),
    ("prev_relevance", 0, 1, ("realizing.post",), "cached unboosted relevance warped to this frame"),
    ("prev_saliency", 0, 1, ("perspectival",), "previous saliency warped to this frame"),
    ("fixation", 0, 1, ("attending",), "EMA of past selections, warped"),
    *[
        (f"clip_{i}", -1, 1, ("clustering",), f"dense CLIP feature on basis direction {i}; zeros without CLIP")
        for i in range(16)
    ],
    ("edge_distance", 0, 1, ("propositional",), "distance to the nearest strong-edge cell / grid diagonal"),
    ("text", 0, 1, ("participatory",), "stroke density with mixed edge orientations"),
]

CHANNELS: dict[str, Channel] = {
    name: Channel(name, i, float(lo), float(hi), readers, meaning)
    for i, (name, lo, hi, readers, meaning) in enumerate(_SPECS)
}
NUM_CHANNELS = len(CHANNELS)
CLIP_CHANNELS = tuple(f"clip_{i}" for i in range(16))
READERS = ("propositional", "perspectival", "participatory", "clustering", "balancing", "realizing.post", "attending")


def idx(name: str) -> int:
    """Index of channel ``name`` in the texture array."""
    return CHANNELS[name].index


def registry() -> list[dict[str, object]]:
    """The registry as plain data, for export metadata and JSONL headers."""
    return [
        {"name": c.name, "index": c.index, "range": [c.low, c.high], "readers": list(c.readers)}
        for c in CHANNELS.values()
    ]
