"""Knowing stage: the three ways of knowing as score maps (DESIGN.md section 5).

- propositional: how much structure (information) a cell carries,
- perspectival: how much it stands out (saliency, motion) from where the viewer looks,
- participatory: how well it couples to the query: a product of Gaussians over the channels the attribute
  encoder set, or with CLIP the full-dimension cosine between the text embedding and each cell's dense CLIP
  feature in the joint space, turned into a probability against neutral prompts.

Each is a pure function of its inputs; weights are fixed constants so maps compare across frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .channels import idx
from .clip import ClipText, unit

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
    return _spread(q) * has_query(query_weights)[:, None, None]


def participatory_clip(feat: Tensor, text_emb: Tensor, neutral: Tensor, logit_scale: Tensor) -> Tensor:
    """Query coupling with CLIP: the query against neutral prompts, cell by cell, in the joint space.

    Q = softmax(logit_scale * [cos(t, f), cos(n_1, f), ..., cos(n_M, f)])[0]: the full-dimension cosine of the
    text embedding t and the cell feature f, made a probability by competing with M neutral prompts ("a photo.",
    "background."...) at CLIP's own temperature. A fixed scale, unlike a per-frame normalisation: a frame without
    the queried thing scores low everywhere instead of lifting its best cell. Then raised to at least
    QUERY_SPREAD times the best neighbour's Q, as for the attribute encoder; zero for a stream without a query.

    Args:
        feat: [B, D, gh, gw] cell features, unit along D or zero where unknown (as
            :func:`~arr_coc_stream.realizing.clip_cache` gives them). text_emb: [B, D], zero without a query.
        neutral: [M, D] unit neutral-prompt embeddings. logit_scale: scalar.

    Returns:
        [B, gh, gw] in [0, 1].
    """
    bsz, d, gh, gw = feat.shape
    t = unit(text_emb)
    texts = torch.cat([t[:, None], neutral[None].expand(bsz, -1, -1)], dim=1)  # [B, 1 + M, D]
    cos = torch.bmm(texts, feat.reshape(bsz, d, gh * gw))  # one product for the query and every neutral prompt
    q = torch.softmax(logit_scale * cos, dim=1)[:, 0].reshape(bsz, gh, gw)
    return _spread(q) * has_text(text_emb)[:, None, None]


def _spread(q: Tensor) -> Tensor:
    """Raise each cell to at least QUERY_SPREAD times its best 8-neighbour. [B, gh, gw] -> [B, gh, gw]."""
    return torch.maximum(q, QUERY_SPREAD * F.max_pool2d(q[:, None], 3, stride=1, padding=1)[:, 0])


def has_query(query_weights: Tensor) -> Tensor:
    """1.0 for streams with a query, 0.0 without. [B, 40] -> [B]."""
    return (query_weights.sum(dim=1) > 0).to(query_weights.dtype)


def has_text(text_emb: Tensor) -> Tensor:
    """1.0 for streams with a CLIP query (a unit text embedding), 0.0 without (zeros). [B, D] -> [B]."""
    return (torch.linalg.vector_norm(text_emb, dim=1) > 0.5).to(text_emb.dtype)


class Knowing(nn.Module):
    """Module twin of the three scorers; its constants are frozen parameters a later fit can learn.

    Args:
        saliency_memory, foveal_falloff: see :func:`perspectival`.
        clip: a CLIP model's constants (its neutral-prompt embeddings and temperature are used); None for the
            attribute encoder.
    """

    def __init__(self, saliency_memory: float, foveal_falloff: float, clip: ClipText | None = None) -> None:
        super().__init__()
        self.saliency_memory = nn.Parameter(torch.tensor(saliency_memory), requires_grad=False)
        self.foveal_falloff = nn.Parameter(torch.tensor(foveal_falloff), requires_grad=False)
        if clip is not None:
            self.register_buffer("neutral", clip.neutral.detach().float().clone(), persistent=False)
            self.register_buffer("logit_scale", torch.tensor(float(clip.logit_scale)), persistent=False)

    def forward(self, tex: Tensor, query: tuple[Tensor, ...], clip_feat: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Three [B, gh, gw] maps (P, S, Q).

        Args:
            tex: [B, 40, gh, gw]. query: ``(query_weights, query_targets)`` [B, 40] each, or ``(text_emb,)``
                [B, D] with CLIP. clip_feat: [B, D, gh, gw] cell features, with CLIP only.
        """
        if clip_feat is None:
            q = participatory(tex, *query)
        else:
            q = participatory_clip(clip_feat, query[0], self.neutral, self.logit_scale)
        return propositional(tex), perspectival(tex, self.saliency_memory, self.foveal_falloff), q
