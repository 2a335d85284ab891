"""Balancing stage (DESIGN.md section 5): opponent processing of the P, S, Q maps and the cluster assignment.

Maps are small random [B, gh, gw] tensors; clusters are laid out by hand (quadrants) or drawn at random and
written to the ``cluster_id`` channel of a zero texture. Each test checks one opponent pair or a range.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from arr_coc_stream.balancing import Balancing, balance, cluster_onehot, query_match
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


def _balance(
    p: Tensor,
    s: Tensor,
    q: Tensor,
    query_on: list[float],
    ids: Tensor | None = None,
    particularize: float = 0.5,
    query_share: float = 0.75,
    diversify: float = 0.0,
    gate: float = 0.25,
    damp: float = 0.5,
    floor: float = 0.3,
    presence: float = 0.25,
) -> Tensor:
    onehot = _onehot(_quadrant_ids(p.shape[0]) if ids is None else ids)
    return balance(
        p,
        s,
        q,
        torch.tensor(query_on),
        onehot,
        torch.tensor(particularize),
        torch.tensor(query_share),
        torch.tensor(diversify),
        torch.tensor(gate),
        torch.tensor(damp),
        torch.tensor(presence),
        floor,
    )[0]


def test_without_query_q_is_ignored() -> None:
    p, s, q = _maps(0)
    a = _balance(p, s, q, [0.0, 0.0], diversify=0.1)
    b = _balance(p, s, 1.0 - q, [0.0, 0.0], diversify=0.1)
    assert torch.equal(a, b)
    c = _balance(p, s, 1.0 - q, [1.0, 0.0], diversify=0.1)  # only the stream with a query moves
    assert torch.equal(a[1], c[1]) and not torch.equal(a[0], c[0])


def test_query_lifts_matched_cells_by_their_share_of_headroom() -> None:
    p, s, _ = _maps(1)
    base = _balance(p, s, torch.zeros_like(p), [0.0, 0.0])
    q = torch.zeros_like(p)
    q[:, 1, 2] = 1.0
    for share in (0.25, 0.75):
        out = _balance(p, s, q, [1.0, 1.0], query_share=share)
        assert torch.allclose(out[:, 1, 2], base[:, 1, 2] + share * (1.0 - base[:, 1, 2]), atol=1e-6)
    # a partial match lifts by the square root of its gated match relative to the frame's best (no tempering:
    # damp=0): faint but real matches rise above the unmatched rest
    q[:, 1, 2], q[:, 3, 3] = 0.5, 0.625  # gated (q - gate) / (1 - gate): 1/3 and 1/2, so g = 2/3 and 1
    out = _balance(p, s, q, [1.0, 1.0], query_share=0.75, gate=0.25, damp=0.0)
    assert torch.allclose(out[:, 1, 2], base[:, 1, 2] + 0.75 * (2 / 3) ** 0.5 * (1.0 - base[:, 1, 2]), atol=1e-6)
    # the frame's best match gets the full lift, whatever its absolute value (real colours are rarely pure)
    assert torch.allclose(out[:, 3, 3], base[:, 3, 3] + 0.75 * (1.0 - base[:, 3, 3]), atol=1e-6)


def test_query_match_held_and_confidence() -> None:
    q = torch.zeros(4, GH, GW)
    q[0, 1, 1], q[0, 2, 2] = 0.625, 0.4375  # gate 0.25: gated 0.5 and 0.25, relative 1 and 0.5
    q[1] = 0.2  # under the gate everywhere: no match
    q[3, 0, 0] = 0.3  # a faint best match: gated 1/15
    g, held, confidence = query_match(q, torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor(0.25), torch.tensor(0.2))
    assert torch.allclose(g[0, 1, 1], torch.tensor(1.0)) and torch.allclose(g[0, 2, 2], torch.tensor(0.5))
    assert float(g[0].sum()) == pytest.approx(1.5) and torch.all(g[1:3] == 0.0) and float(g[3, 0, 0]) == 1.0
    # held: the best gated match over query_presence, capped at 1; confidence: the absolute best match
    assert held.tolist() == pytest.approx([1.0, 0.0, 0.0, (1 / 15) / 0.2])
    assert confidence.tolist() == pytest.approx([0.5, 0.0, 1.0, 1 / 15])  # no query: full budgets


def test_a_query_matching_nothing_leaves_the_map_exactly() -> None:
    p, s, q = _maps(8)
    base = _balance(p, s, q, [0.0, 0.0], diversify=0.1)
    weak = 0.25 * q  # every cell under the gate
    assert torch.equal(_balance(p, s, weak, [1.0, 1.0], diversify=0.1), base)


def test_the_rest_is_tempered_towards_the_floor_never_below() -> None:
    p, s, _ = _maps(9)
    floor = 0.3
    base = _balance(p, s, torch.zeros_like(p), [0.0, 0.0], floor=floor)
    q = torch.zeros_like(p)
    q[:, 0, 0] = 1.0  # the query is present: one full match
    out = _balance(p, s, q, [1.0, 1.0], damp=0.5, floor=floor)
    rest = torch.ones_like(p, dtype=torch.bool)
    rest[:, 0, 0] = False
    above = rest & (base > floor)
    assert torch.allclose(out[above], base[above] - 0.5 * (base[above] - floor), atol=1e-6)
    assert torch.all(out[above] >= floor) and torch.equal(out[rest & ~above], base[rest & ~above])
    assert torch.all(out[:, 0, 0] > base[:, 0, 0])
    # without damping the rest is untouched
    assert torch.equal(_balance(p, s, q, [1.0, 1.0], damp=0.0, floor=floor)[rest], base[rest])
    # a frame that holds the query only faintly (best gated match 0.1, presence 0.25: held 0.4) tempers less
    q[:, 0, 0] = 0.325  # gate 0.25: gated 0.1
    faint = _balance(p, s, q, [1.0, 1.0], damp=0.5, floor=floor)
    assert torch.allclose(faint[above], base[above] - 0.4 * 0.5 * (base[above] - floor), atol=1e-6)


def test_temper_is_what_the_rest_keeps_and_one_without_a_query() -> None:
    p, s, q = _maps(10)
    onehot, args = _onehot(_quadrant_ids()), [torch.tensor(v) for v in (0.5, 0.75, 0.0, 0.25, 0.6, 0.25)]
    _, _, temper = balance(p, s, q, torch.tensor([0.0, 0.0]), onehot, *args, 0.3)
    assert torch.equal(temper, torch.ones_like(p))
    q = torch.zeros_like(p)
    q[:, 2, 1] = 1.0
    _, _, temper = balance(p, s, q, torch.tensor([1.0, 1.0]), onehot, *args, 0.3)
    assert torch.all(temper[:, 2, 1] == 1.0) and torch.allclose(temper.sum((1, 2)), torch.tensor(1.0 + 15 * 0.4))


def test_particularize_weighs_structure_against_salience() -> None:
    p, s, q = _maps(2)
    assert torch.allclose(_balance(p, s, q, [0.0, 0.0], particularize=1.0), p)
    assert torch.allclose(_balance(p, s, q, [0.0, 0.0], particularize=0.0), s)
    half = _balance(p, s, q, [0.0, 0.0], particularize=0.5)
    assert torch.allclose(half, 0.5 * (p + s))


def test_diversify_lifts_only_each_clusters_best_cell() -> None:
    p, s, q = _maps(3, scale=0.6)  # room below 1 for the bonus, the query's best cell included
    plain = _balance(p, s, q, [1.0, 0.0], query_share=0.5)
    lifted = _balance(p, s, q, [1.0, 0.0], query_share=0.5, diversify=0.15)
    delta = lifted - plain
    ids = _quadrant_ids()
    for b in range(2):
        for k in range(K):
            member = ids[b] == k
            best = plain[b][member].argmax()
            assert torch.allclose(delta[b][member][best], torch.tensor(0.15))
            others = torch.cat([delta[b][member][:best], delta[b][member][best + 1 :]])
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
    module = Balancing(
        particularize=0.3,
        query_share=0.6,
        diversify=0.2,
        query_gate=0.2,
        query_damp=0.4,
        query_presence=0.3,
        floor=0.35,
        clusters=K,
    )
    expected = balance(
        p,
        s,
        q,
        query_on,
        cluster_onehot(tex, K),
        torch.tensor(0.3),
        torch.tensor(0.6),
        torch.tensor(0.2),
        torch.tensor(0.2),
        torch.tensor(0.4),
        torch.tensor(0.3),
        0.35,
    )
    out, confidence, temper = module(tex, p, s, q, query_on)
    assert torch.equal(out, expected[0]) and torch.equal(confidence, expected[1]) and torch.equal(temper, expected[2])
    expected = expected[0]
    assert torch.allclose(
        expected,
        _balance(
            p,
            s,
            q,
            [1.0, 0.0],
            ids=ids,
            particularize=0.3,
            query_share=0.6,
            diversify=0.2,
            gate=0.2,
            damp=0.4,
            floor=0.35,
            presence=0.3,
        ),
    )
    assert not any(param.requires_grad for param in module.parameters())
