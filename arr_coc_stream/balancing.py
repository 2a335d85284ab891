"""Balancing stage: opponent processing of the three score maps (DESIGN.md section 5).

- compress / particularize: ``particularize`` weighs structure (propositional) against salience
  (perspectival) in the query-free base map.
- exploit / explore: a query *lifts* the cells it matches above the query-free base and tempers the rest (its
  structure and, in realizing, its motion boost), never below the relevance floor; the explore share of K is spent
  in attending, with inhibition of return, never on this map.
- focus / diversify: ``diversify`` lifts the best cell of every colour/position cluster, so a frame dominated by
  one region still spends tokens on the others.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .channels import idx


def query_match(
    q: Tensor, query_on: Tensor, query_gate: Tensor, query_presence: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The query match relative to the frame's best, how clearly the frame holds the query, and the confidence.

    With the gated match ``m = clamp((q - gate) / (1 - gate), 0, 1)`` and the frame's best ``P = max(m)``:

    - ``g = m / P``: the frame's best-matching cells get the full lift whatever their absolute match. Colours in
      real footage are rarely pure (sky, a faded jacket): an absolute match of 0.3 is often the best there is;
    - ``held = min(P / query_presence, 1)``: a frame whose best cell matches clearly holds the query fully; the
      lift and the tempering of the rest scale with it, so a stray faint match (a colour that is not there) moves
      the map little;
    - ``confidence = P`` (1.0 without a query), absolute: it scales the foveal budgets, so a query that the frame
      holds only faintly buys few crops.

    Args:
        q: [B, gh, gw] participatory map in [0, 1]. query_on: [B] 1.0 where the stream has a query.
        query_gate: scalar in [0, 1): a match below it is no match. query_presence: scalar in (0, 1].

    Returns:
        g [B, gh, gw] in [0, 1] (zero without a query or a match); held [B] in [0, 1]; confidence [B] in [0, 1].
    """
    m = torch.clamp((q - query_gate) / (1.0 - query_gate), 0.0, 1.0) * query_on.view(-1, 1, 1)
    best = m.amax(dim=(1, 2))
    g = m / torch.clamp(best, min=1e-6).view(-1, 1, 1)
    held = torch.clamp(best / query_presence, max=1.0)
    return g, held, 1.0 - query_on * (1.0 - best)


def balance(
    p: Tensor,
    s: Tensor,
    q: Tensor,
    query_on: Tensor,
    cluster_onehot: Tensor,
    particularize: Tensor,
    query_share: Tensor,
    diversify: Tensor,
    query_gate: Tensor,
    query_damp: Tensor,
    query_presence: Tensor,
    floor: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Combine the three maps into one balanced map.

    With ``base = particularize * p + (1 - particularize) * s`` (the query-free map), and the relative match ``g``
    and ``held`` of :func:`query_match`::

        temper = 1 - query_damp * held * (1 - g)
        rest   = base - (1 - temper) * max(base - floor, 0)
        bal    = rest + query_share * held * sqrt(g) * (1 - rest)

    so a matched cell rises towards 1 (by up to ``query_share`` of its headroom; the square root lets a faint but
    real match rise above the unmatched rest) and the unmatched rest is tempered towards ``floor``, never below
    it, as clearly as the frame holds the query; a query that matches nothing (every ``q`` under the gate) leaves
    the query-free map exactly as it was. ``temper`` also scales the motion boost in realizing: a moving cell the
    query does not ask for must not outrank one it does.

    Args:
        p, s, q: [B, gh, gw] propositional, perspectival, participatory maps in [0, 1].
        query_on: [B] 1.0 where the stream has a query.
        cluster_onehot: [B, N, k] cluster assignment of each cell (N = gh * gw).
        particularize, query_share, diversify, query_gate, query_damp, query_presence: scalar parameters in
            [0, 1] (query_gate < 1, query_presence > 0).
        floor: the relevance floor of the selection, in [0, 1].

    Returns:
        balanced map [B, gh, gw] in [0, 1]; confidence [B] in [0, 1] (see :func:`query_match`), which scales the
        foveal budgets; temper [B, gh, gw] in [0, 1], the share of the query-free relevance above the floor that
        a cell keeps (1 everywhere without a query).
    """
    bsz, gh, gw = p.shape
    base = particularize * p + (1.0 - particularize) * s
    g, held, confidence = query_match(q, query_on, query_gate, query_presence)
    held = held.view(-1, 1, 1)
    temper = 1.0 - query_damp * held * (1.0 - g)
    rest = base - (1.0 - temper) * torch.clamp(base - floor, min=0.0)
    bal = rest + query_share * torch.sqrt(g) * (1.0 - rest)
    flat = bal.reshape(bsz, gh * gw, 1)  # [B, N, 1]
    # each cluster's best value, read back per cell: non-members are pushed below any score
    cluster_best = (cluster_onehot * flat + (cluster_onehot - 1.0)).amax(dim=1)  # [B, k]
    cell_best = (cluster_onehot * cluster_best[:, None, :]).sum(dim=-1)  # [B, N]
    is_best = (flat[..., 0] >= cell_best).to(bal.dtype).reshape(bsz, gh, gw)
    return torch.clamp(bal + diversify * is_best, 0.0, 1.0), confidence, temper


def cluster_onehot(tex: Tensor, clusters: int) -> Tensor:
    """Recover the one-hot cluster assignment from the cluster_id channel.

    Args:
        tex: [B, C, gh, gw]. clusters: k.

    Returns:
        [B, N, k] float.
    """
    ids = torch.round(tex[:, idx("cluster_id")].flatten(1) * (clusters - 1))  # [B, N]
    return (ids[..., None] == torch.arange(clusters, dtype=tex.dtype, device=tex.device)).to(tex.dtype)


class Balancing(nn.Module):
    """Module twin of :func:`balance` with its parameters frozen."""

    def __init__(
        self,
        particularize: float,
        query_share: float,
        diversify: float,
        query_gate: float,
        query_damp: float,
        query_presence: float,
        floor: float,
        clusters: int,
    ) -> None:
        super().__init__()
        self.particularize = nn.Parameter(torch.tensor(particularize), requires_grad=False)
        self.query_share = nn.Parameter(torch.tensor(query_share), requires_grad=False)
        self.diversify = nn.Parameter(torch.tensor(diversify), requires_grad=False)
        self.query_gate = nn.Parameter(torch.tensor(query_gate), requires_grad=False)
        self.query_damp = nn.Parameter(torch.tensor(query_damp), requires_grad=False)
        self.query_presence = nn.Parameter(torch.tensor(query_presence), requires_grad=False)
        self.floor = floor
        self.clusters = clusters

    def forward(self, tex: Tensor, p: Tensor, s: Tensor, q: Tensor, query_on: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, C, gh, gw] and three [B, gh, gw] maps, [B] -> [B, gh, gw] map, [B] confidence, [B, gh, gw] temper."""
        return balance(
            p,
            s,
            q,
            query_on,
            cluster_onehot(tex, self.clusters),
            self.particularize,
            self.query_share,
            self.diversify,
            self.query_gate,
            self.query_damp,
            self.query_presence,
            self.floor,
        )
