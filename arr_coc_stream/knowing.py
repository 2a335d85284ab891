"""Knowing stage: the three ways of knowing as score maps (DESIGN.md section 5).

- propositional: how much structure (information) a cell carries,
- perspectival: how much it stands out (saliency, motion) from where the viewer looks,
- participatory: how well it couples to the query. The query head scores the match (:mod:`arr_coc_stream.query`:
  a product of Gaussians over channels for the attributes head, the full-dimension CLIP cosine for the clip head);
  this stage lends part of each cell's match to its neighbours and zeroes streams without a query.

Each is a pure function of its inputs; weights are fixed constants so maps compare across frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .channels import idx

# Structure cues and their weights (sum 1): detail lives at edges, thin strokes, high frequencies, region
# boundaries, small regions and near strong edges; flat regions compress.
PROPOSITIONAL_WEIGHTS: dict[str, float] = {
    "edge": 0.25,
    "stroke": 0.2,
    "highpass": 0.15,
    "flatness": 0.15,
    "cluster_dist": 0.1,
    "cluster_size": 0.05,
    "edge_distance": 0.1,
}
# Cues that count inversely (high value = less information).
_INVERSE = ("flatness", "cluster_size", "edge_distance")
SALIENCY_WEIGHT, MOTION_WEIGHT = 0.6, 0.4
# Share of a cell's query match lent to its 8 neighbours: a cell beside a strong match is the object's edge or its
# immediate context, which a VLM wants too. 0.3 since the attributes head scores a colour per pixel (a half-covered
# cell already matches about half): on the real clips of `arr-coc-stream eval`, 0.6 lifted the colour-free
# neighbours of a colour as high as its faint true cells (selection recall on bikes.mp4 brown 0.79 -> 0.89 at 0.3).
QUERY_SPREAD = 0.3


def _ch(tex: Tensor, name: str) -> Tensor:
    """One channel of the texture array. [B, C, gh, gw] -> [B, gh, gw]."""
    return tex[:, idx(name)]


def propositional(tex: Tensor) -> Tensor:
    """Structure content. [B, C, gh, gw] -> [B, gh, gw] in [0, 1]."""
    score = torch.zeros_like(_ch(tex, "edge"))
    for name, w in PROPOSITIONAL_WEIGHTS.items():
        v = _ch(tex, name)
        if name == "edge_distance":
            v = torch.clamp(4.0 * v, 0.0, 1.0)  # within ~11 cells of an edge still counts as near
        score = score + w * ((1.0 - v) if name in _INVERSE else v)
    return score


def perspectival(tex: Tensor, saliency_memory: Tensor, foveal_falloff: Tensor) -> Tensor:
    """Salience: stabilised saliency and motion under a foveal falloff.

    Args:
        tex: [B, C, gh, gw]. saliency_memory: scalar weight of the warped previous saliency in [0, 0.95].
        foveal_falloff: scalar attenuation at eccentricity 1, in [0, 1].

    Returns:
        [B, gh, gw] in [0, 1].
    """
    sal = (1.0 - saliency_memory) * _ch(tex, "saliency") + saliency_memory * _ch(tex, "prev_saliency")
    raw = SALIENCY_WEIGHT * sal + MOTION_WEIGHT * _ch(tex, "motion")
    return torch.clamp(raw * (1.0 - foveal_falloff * _ch(tex, "eccentricity")), 0.0, 1.0)


def participatory(match: Tensor, query_on: Tensor) -> Tensor:
    """Query coupling: the query head's match, raised to at least QUERY_SPREAD times the best 8-neighbour's, and
    zero for a stream without a query.

    Args:
        match: [B, gh, gw] in [0, 1], how well each cell matches the query (the head's scorer).
        query_on: [B] 1.0 where the stream has a query, else 0.0.

    Returns:
        [B, gh, gw] in [0, 1].
    """
    spread = torch.maximum(match, QUERY_SPREAD * F.max_pool2d(match[:, None], 3, stride=1, padding=1)[:, 0])
    return spread * query_on[:, None, None]


class Knowing(nn.Module):
    """Module twin of the three scorers; its constants are frozen parameters a later fit can learn.

    Args:
        saliency_memory, foveal_falloff: see :func:`perspectival`.
    """

    def __init__(self, saliency_memory: float, foveal_falloff: float) -> None:
        super().__init__()
        self.saliency_memory = nn.Parameter(torch.tensor(saliency_memory), requires_grad=False)
        self.foveal_falloff = nn.Parameter(torch.tensor(foveal_falloff), requires_grad=False)

    def forward(self, tex: Tensor, match: Tensor, query_on: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Three [B, gh, gw] maps (P, S, Q).

        Args:
            tex: [B, C, gh, gw] texture. match: [B, gh, gw] the query head's match. query_on: [B].
        """
        return (
            propositional(tex),
            perspectival(tex, self.saliency_memory, self.foveal_falloff),
            participatory(match, query_on),
        )
