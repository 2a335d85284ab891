"""Knowing stage (DESIGN.md section 5): the propositional, perspectival and participatory scorers.

Textures are zero arrays with the channels a case needs set by name; each test checks a direction (a cue that
must raise or lower a score), a documented blend, or a range, and the ``Knowing`` module against the functions.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from arr_coc_stream import knowing
from arr_coc_stream.channels import NUM_CHANNELS, idx
from arr_coc_stream.knowing import QUERY_SPREAD, Knowing, participatory, perspectival, propositional

GH = GW = 6


def _texture(bsz: int = 1, fill: float = 0.0, **channels: Tensor | float) -> Tensor:
    """A constant texture [B, NUM_CHANNELS, GH, GW] with the named channels set."""
    tex = torch.full((bsz, NUM_CHANNELS, GH, GW), fill)
    for name, value in channels.items():
        tex[:, idx(name)] = value
    return tex


def _random_texture(bsz: int = 2, seed: int = 0) -> Tensor:
    return torch.rand(bsz, NUM_CHANNELS, GH, GW, generator=torch.Generator().manual_seed(seed))


def _persp(tex: Tensor, memory: float = 0.0, falloff: float = 0.0) -> Tensor:
    return perspectival(tex, torch.tensor(memory), torch.tensor(falloff))


def test_propositional_structured_cell_beats_flat_cell() -> None:
    tex = _texture(flatness=1.0, cluster_size=1.0, edge_distance=1.0)  # flat everywhere
    for name in ("edge", "stroke", "highpass"):
        tex[:, idx(name), 2, 3] = 1.0
    for name in ("flatness", "cluster_size", "edge_distance"):
        tex[:, idx(name), 2, 3] = 0.0
    score = propositional(tex)
    assert score.shape == (1, GH, GW)
    others = torch.cat([score[0, :2].flatten(), score[0, 2, :3], score[0, 2, 4:], score[0, 3:].flatten()])
    assert score[0, 2, 3] > others.max() + 0.5


@pytest.mark.parametrize("name", list(knowing.PROPOSITIONAL_WEIGHTS))
def test_propositional_cue_direction(name: str) -> None:
    """Each structure cue raises the score; flatness, cluster size and edge distance lower it."""
    base = _random_texture(seed=1) * 0.2  # low values leave room for edge_distance's 4x near-edge scale
    raised = base.clone()
    raised[:, idx(name)] += 0.1
    delta = propositional(raised) - propositional(base)
    if name in ("flatness", "cluster_size", "edge_distance"):
        assert torch.all(delta < 0)
    else:
        assert torch.all(delta > 0)


def test_propositional_edge_distance_saturates() -> None:
    """Distance to an edge counts against detail only up to a quarter of the diagonal; beyond, all cells are far."""
    score = {d: propositional(_texture(edge_distance=d)) for d in (0.0, 0.1, 0.25, 0.6)}
    assert torch.all(score[0.1] < score[0.0]) and torch.all(score[0.25] < score[0.1])
    assert torch.allclose(score[0.6], score[0.25])


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_propositional_range(fill: float) -> None:
    score = propositional(_texture(2, fill))
    assert score.min() >= 0.0 and score.max() <= 1.0
    score = propositional(_random_texture())
    assert score.min() >= 0.0 and score.max() <= 1.0


@pytest.mark.parametrize("name", ["saliency", "motion"])
def test_perspectival_rises_with_saliency_and_motion(name: str) -> None:
    low = _persp(_texture(**{name: 0.2}), falloff=0.5)
    high = _persp(_texture(**{name: 0.7}), falloff=0.5)
    assert torch.all(high > low)


def test_perspectival_eccentricity_falloff() -> None:
    centre = _texture(saliency=0.8, motion=0.5, eccentricity=0.0)
    edge = _texture(saliency=0.8, motion=0.5, eccentricity=1.0)
    assert torch.all(_persp(edge, falloff=0.5) < _persp(centre, falloff=0.5))
    assert torch.all(_persp(edge, falloff=0.9) < _persp(edge, falloff=0.5))
    assert torch.equal(_persp(edge, falloff=0.0), _persp(centre, falloff=0.0))  # no falloff, no effect


def test_perspectival_saliency_memory_blend() -> None:
    tex = _texture(saliency=0.2, prev_saliency=0.9, motion=0.3)
    ignores = _texture(saliency=0.2, prev_saliency=0.0, motion=0.3)
    assert torch.equal(_persp(tex, memory=0.0), _persp(ignores, memory=0.0))
    # at memory m the score equals the memory-free score of the blended saliency
    for m in (0.5, 0.9):
        blended = _texture(saliency=(1 - m) * 0.2 + m * 0.9, motion=0.3)
        assert torch.allclose(_persp(tex, memory=m), _persp(blended), atol=1e-6)
    follow = _persp(tex, memory=0.9)
    assert torch.all(
        (follow - _persp(_texture(saliency=0.9, motion=0.3))).abs()
        < (follow - _persp(_texture(saliency=0.2, motion=0.3))).abs()
    )


def test_perspectival_clamped() -> None:
    over = _persp(_texture(saliency=3.0, prev_saliency=3.0, motion=3.0))
    under = _persp(_texture(saliency=1.0, motion=1.0, eccentricity=1.0), falloff=2.0)
    assert torch.all(over == 1.0) and torch.all(under == 0.0)
    score = _persp(_random_texture(seed=2), memory=0.5, falloff=0.5)
    assert score.min() >= 0.0 and score.max() <= 1.0


def test_participatory_zero_without_query() -> None:
    match = torch.rand(2, GH, GW, generator=torch.Generator().manual_seed(3)) + 0.1
    q = participatory(match, torch.tensor([1.0, 0.0]))
    assert torch.all(q[1] == 0.0) and torch.all(q[0] >= match[0])


def test_participatory_single_match_spreads_to_neighbours_only() -> None:
    match = torch.zeros(1, GH, GW)
    match[0, 2, 3] = 1.0
    q = participatory(match, torch.ones(1))[0]
    expected = torch.zeros(GH, GW)
    expected[1:4, 2:5] = QUERY_SPREAD
    expected[2, 3] = 1.0
    assert torch.allclose(q, expected)


def test_participatory_never_lowers_own_match() -> None:
    match = torch.rand(3, GH, GW, generator=torch.Generator().manual_seed(4))
    q = participatory(match, torch.ones(3))
    assert torch.all(q >= match) and torch.any(q > match)
    assert q.max() <= 1.0


def test_knowing_module_matches_functions() -> None:
    tex = _random_texture(seed=5)
    match = torch.rand(2, GH, GW, generator=torch.Generator().manual_seed(6))
    query_on = torch.tensor([1.0, 0.0])
    module = Knowing(saliency_memory=0.4, foveal_falloff=0.7)
    p, s, q = module(tex, match, query_on)
    assert torch.equal(p, propositional(tex))
    assert torch.equal(s, _persp(tex, memory=0.4, falloff=0.7))
    assert torch.equal(q, participatory(match, query_on))
    assert not any(param.requires_grad for param in module.parameters())
