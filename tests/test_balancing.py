"""Balancing stage (DESIGN.md section 5): opponent processing of the P, S, Q maps and the cluster assignment.

Maps are small random [B, gh, gw] tensors; clusters are laid out by hand (quadrants) or drawn at random and
written to the ``cluster_id`` channel of a zero texture. Each test checks one opponent pair or a range.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arr_coc_stream.balancing import Balancing, balance, cluster_onehot
from arr_coc_stream.channels import NUM_CHANNELS, idx

GH = GW = 4
K = 4


def _maps(seed: int, bsz: int = 2, scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Random p, s, q maps [B, GH, GW] with distinct values."""
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.rand(bsz, GH, GW, generator=g) for _ in range(3))  # type: ignore[return-value]


def _quadrant_ids(bsz: int = 2) -> Tensor:
    """Cluster ids [B, GH, GW]: the four 2x2 quadrants are clusters 0..3."""
    ids = torch.zeros(GH, GW)
    ids[:2, 2:], ids[2:, :2], ids[2:, 2:] = 1, 2, 3
    return ids.expand(bsz, GH, GW).clone()


def _texture(ids: Tensor, clusters: int = K) -> Tensor:
    """A zero texture [B, NUM_CHANNELS, GH, GW] whose cluster_id channel encodes ``ids`` as id / (k - 1)."""
    tex = torch.zeros(ids.shape[0], NUM_CHANNELS, GH, GW)
    tex[:, idx("cluster_id")] = ids / (clusters - 1)
    return tex


def _onehot(ids: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(ids.flatten(1).long(), K).float()  # [B, N, K]


def _balance(p: Tensor, s: Tensor, q: Tensor, query_on: list[float], ids: Tensor | None = None,
             particularize: float = 0.5, query_share: float = 0.75, diversify: float = 0.0) -> Tensor:
    onehot = _onehot(_quadrant_ids(p.shape[0]) if ids is None else ids)
    return balance(p, s, q, torch.tensor(query_on), onehot, torch.tensor(particularize),
                   torch.tensor(query_share), torch.tensor(diversify))


def test_without_query_q_is_ignored() -> None:
    p, s, q = _maps(0)
    a = _balance(p, s, q, [0.0, 0.0], diversify=0.1)
    b = _balance(p, s, 1.0 - q, [0.0, 0.0], diversify=0.1)
    assert torch.equal(a, b)
    c = _balance(p, s, 1.0 - q, [1.0, 0.0], diversify=0.1)  # only the stream with a query moves
    assert torch.equal(a[1], c[1]) and not torch.equal(a[0], c[0])


def test_query_raises_a_cell_by_its_share() -> None:
    p, s, q = _maps(1, scale=0.5)
    for share in (0.25, 0.75):
        before = _balance(p, s, q, [1.0, 1.0], query_share=share)
        raised = q.clone()
        raised[:, 1, 2] += 0.4
        after = _balance(p, s, raised, [1.0, 1.0], query_share=share)
        delta = after - before
        assert torch.allclose(delta[:, 1, 2], torch.full((2,), share * 0.4), atol=1e-6)
        delta[:, 1, 2] = 0.0
        assert torch.all(delta == 0.0)
    base = _balance(p, s, q, [0.0, 0.0])
    full = _balance(p, s, q, [1.0, 1.0], query_share=1.0)
    assert torch.allclose(full, q) and torch.allclose(_balance(p, s, q, [1.0, 1.0], query_share=0.0), base)


def test_particularize_weighs_structure_against_salience() -> None:
    p, s, q = _maps(2)
    assert torch.allclose(_balance(p, s, q, [0.0, 0.0], particularize=1.0), p)
    assert torch.allclose(_balance(p, s, q, [0.0, 0.0], particularize=0.0), s)
    half = _balance(p, s, q, [0.0, 0.0], particularize=0.5)
    assert torch.allclose(half, 0.5 * (p + s))


def test_diversify_lifts_only_each_clusters_best_cell() -> None:
    p, s, q = _maps(3, scale=0.8)  # room below 1 for the bonus
    plain = _balance(p, s, q, [1.0, 0.0])
    lifted = _balance(p, s, q, [1.0, 0.0], diversify=0.15)
    delta = lifted - plain
    ids = _quadrant_ids()
    for b in range(2):
        for k in range(K):
            member = ids[b] == k
            best = plain[b][member].argmax()
            assert torch.allclose(delta[b][member][best], torch.tensor(0.15))
            others = torch.cat([delta[b][member][:best], delta[b][member][best + 1:]])
            assert torch.all(others == 0.0)


def test_single_cluster_gets_one_bonus() -> None:
    p, s, q = _maps(4, scale=0.8)
    ids = torch.zeros(2, GH, GW)
    delta = _balance(p, s, q, [0.0, 0.0], ids=ids, diversify=0.2) - _balance(p, s, q, [0.0, 0.0], ids=ids)
    assert torch.equal((delta > 0).sum(dim=(1, 2)), torch.tensor([1, 1]))


def test_balance_clamped() -> None:
    ones = torch.ones(2, GH, GW)
    out = _balance(ones, ones, ones, [1.0, 0.0], diversify=0.5)
    assert torch.all(out == 1.0)
    p, s, q = _maps(5)
    out = _balance(p, s, q, [1.0, 0.0], diversify=0.5)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_cluster_onehot_recovers_assignment() -> None:
    for clusters in (2, 6, 16):
        ids = torch.randint(0, clusters, (3, GH, GW), generator=torch.Generator().manual_seed(clusters))
        onehot = cluster_onehot(_texture(ids.float(), clusters), clusters)
        assert onehot.shape == (3, GH * GW, clusters)
        assert torch.all(onehot.sum(dim=-1) == 1.0)
        assert torch.equal(onehot.argmax(dim=-1), ids.flatten(1))
        # a channel a little off its exact level (reduced precision, resampling) still gives the same cluster
        jitter = (torch.rand(3, GH, GW, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.6
        noisy = cluster_onehot(_texture(ids.float() + jitter, clusters), clusters)
        assert torch.equal(noisy, onehot)


def test_balancing_module_matches_function() -> None:
    ids = torch.randint(0, K, (2, GH, GW), generator=torch.Generator().manual_seed(6)).float()
    tex = _texture(ids)
    p, s, q = _maps(7)
    query_on = torch.tensor([1.0, 0.0])
    module = Balancing(particularize=0.3, query_share=0.6, diversify=0.2, clusters=K)
    expected = balance(p, s, q, query_on, cluster_onehot(tex, K), torch.tensor(0.3), torch.tensor(0.6),
                       torch.tensor(0.2))
    assert torch.equal(module(tex, p, s, q, query_on), expected)
    assert torch.allclose(expected, _balance(p, s, q, [1.0, 0.0], ids=ids, particularize=0.3, query_share=0.6,
                                             diversify=0.2))
    assert not any(param.requires_grad for param in module.parameters())
