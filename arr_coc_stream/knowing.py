"""Knowing stage: the three ways of knowing as score maps (DESIGN.md section 5).

- propositional: how much structure (information) a cell carries,
- perspectival: how much it stands out (saliency, motion) from where the viewer looks,
- participatory: how well it couples to the query.

Each is a pure function of the texture array; weights are fixed constants so maps compare across frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .channels import idx

# Structure cues and their weights (sum 1): detail lives at edges, thin strokes, high frequencies, region
# boundaries, small regions and near strong edges; flat regions compress.
PROPOSITIONAL_WEIGHTS: dict[str, float] = {
    "edge": 0.25, "stroke": 0.2, "highpass": 0.15, "flatness": 0.15, "cluster_dist": 0.1,
    "cluster_size": 0.05, "edge_distance": 0.1,
}
# Cues that count inversely (high value = less information).
_INVERSE = ("flatness", "cluster_size", "edge_distance")
SALIENCY_WEIGHT, MOTION_WEIGHT = 0.6, 0.4
# Share of a cell's query match lent to its 8 neighbours. A cell half covered by the object has a cell-mean
# colour halfway to the background and matches weakly on its own; next to a strong match it is the object's
# edge or its immediate context, which a VLM wants too. Measured on generated clips: a blue ball's
# half-covered edge cells went from Q ~0.15-0.3 (unselected) to >= 0.6.
QUERY_SPREAD = 0.6


def _ch(tex: Tensor, name: str) -> Tensor:
    """One channel of the texture array. [B, 40, gh, gw] -> [B, gh, gw]."""
    return tex[:, idx(name)]


def propositional(tex: Tensor) -> Tensor:
    """Structure content. [B, 40, gh, gw] -> [B, gh, gw] in [0, 1]."""
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
        tex: [B, 40, gh, gw]. saliency_memory: scalar weight of the warped previous saliency in [0, 0.95].
        foveal_falloff: scalar attenuation at eccentricity 1, in [0, 1].

    Returns:
        [B, gh, gw] in [0, 1].
    """
    sal = (1.0 - saliency_memory) * _ch(tex, "saliency") + saliency_memory * _ch(tex, "prev_saliency")
    raw = SALIENCY_WEIGHT * sal + MOTION_WEIGHT * _ch(tex, "motion")
    return torch.clamp(raw * (1.0 - foveal_falloff * _ch(tex, "eccentricity")), 0.0, 1.0)


def participatory(tex: Tensor, query_weights: Tensor, query_targets: Tensor) -> Tensor:
    """Query coupling: a product of Gaussians over the channels the query names.

    Q = exp(-sum_c w_c (x_c - t_c)^2), raised to at least QUERY_SPREAD times the best neighbour's Q; zero
    for a stream without a query (all weights 0).

    Args:
        tex: [B, 40, gh, gw]. query_weights, query_targets: [B, 40] (see :mod:`arr_coc_stream.query`).

    Returns:
        [B, gh, gw] in [0, 1].
    """
    w = query_weights[:, :, None, None]
    t = query_targets[:, :, None, None]
    q = torch.exp(-(w * (tex - t) ** 2).sum(dim=1))
    q = torch.maximum(q, QUERY_SPREAD * F.max_pool2d(q[:, None], 3, stride=1, padding=1)[:, 0])
    return q * has_query(query_weights)[:, None, None]


def has_query(query_weights: Tensor) -> Tensor:
    """1.0 for streams with a query, 0.0 without. [B, 40] -> [B]."""
    return (query_weights.sum(dim=1) > 0).to(query_weights.dtype)


class Knowing(nn.Module):
    """Module twin of the three scorers; its constants are frozen parameters a later fit can learn."""

    def __init__(self, saliency_memory: float, foveal_falloff: float) -> None:
        super().__init__()
        self.saliency_memory = nn.Parameter(torch.tensor(saliency_memory), requires_grad=False)
        self.foveal_falloff = nn.Parameter(torch.tensor(foveal_falloff), requires_grad=False)

    def forward(self, tex: Tensor, query_weights: Tensor, query_targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, 40, gh, gw], [B, 40], [B, 40] -> three [B, gh, gw] maps (P, S, Q)."""
        return (propositional(tex), perspectival(tex, self.saliency_memory, self.foveal_falloff),
                participatory(tex, query_weights, query_targets))
