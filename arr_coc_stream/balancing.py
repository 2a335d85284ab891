"""Balancing stage: opponent processing of the three score maps (DESIGN.md section 5).

- compress / particularize: ``particularize`` weighs structure (propositional) against salience
  (perspectival) in the query-free base map.
- exploit / explore: ``query_share`` weighs the query coupling against the query-free base when a query is
  given; the explore share of K is spent in attending, with inhibition of return, never on this map.
- focus / diversify: ``diversify`` lifts the best cell of every colour/position cluster, so a frame dominated by
  one region still spends tokens on the others.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .channels import idx


def balance(
    p: Tensor, s: Tensor, q: Tensor, query_on: Tensor, cluster_onehot: Tensor,
    particularize: Tensor, query_share: Tensor, diversify: Tensor,
) -> Tensor:
    """Combine the three maps into one balanced map.

    Args:
        p, s, q: [B, gh, gw] propositional, perspectival, participatory maps in [0, 1].
        query_on: [B] 1.0 where the stream has a query.
        cluster_onehot: [B, N, k] cluster assignment of each cell (N = gh * gw).
        particularize, query_share, diversify: scalar parameters.

    Returns:
        [B, gh, gw] in [0, 1].
    """
    bsz, gh, gw = p.shape
    base = particularize * p + (1.0 - particularize) * s
    share = query_share * query_on.view(-1, 1, 1)
    bal = share * q + (1.0 - share) * base
    flat = bal.reshape(bsz, gh * gw, 1)  # [B, N, 1]
    # each cluster's best value, read back per cell: non-members are pushed below any score
    cluster_best = (cluster_onehot * flat + (cluster_onehot - 1.0)).amax(dim=1)  # [B, k]
    cell_best = (cluster_onehot * cluster_best[:, None, :]).sum(dim=-1)  # [B, N]
    is_best = (flat[..., 0] >= cell_best).to(bal.dtype).reshape(bsz, gh, gw)
    return torch.clamp(bal + diversify * is_best, 0.0, 1.0)


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

    def __init__(self, particularize: float, query_share: float, diversify: float, clusters: int) -> None:
        super().__init__()
        self.particularize = nn.Parameter(torch.tensor(particularize), requires_grad=False)
        self.query_share = nn.Parameter(torch.tensor(query_share), requires_grad=False)
        self.diversify = nn.Parameter(torch.tensor(diversify), requires_grad=False)
        self.clusters = clusters

    def forward(self, tex: Tensor, p: Tensor, s: Tensor, q: Tensor, query_on: Tensor) -> Tensor:
        """[B, C, gh, gw] and three [B, gh, gw] maps, [B] -> [B, gh, gw]."""
        return balance(p, s, q, query_on, cluster_onehot(tex, self.clusters),
                       self.particularize, self.query_share, self.diversify)
