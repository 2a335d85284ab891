"""Tests of the attributes query head (arr_coc_stream/query/attributes.py) and the head registry."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import arr_coc_stream.query.attributes as query_module
from arr_coc_stream.channels import CHANNELS, NUM_CHANNELS
from arr_coc_stream.errors import ArrCocError, QueryError
from arr_coc_stream.query import HEADS, EncodedQuery, QueryHead, QueryWarning, head_type
from arr_coc_stream.query.attributes import (
    ACHROMATIC_RGB_WEIGHT,
    COLOUR_AB_WEIGHT,
    COLOUR_RGB_WEIGHT,
    MOTION_WEIGHT,
    POSITION_WEIGHT,
    TEXT_WEIGHT,
    AttributeQuery,
    AttributesHead,
    css4_colours,
    srgb_to_lab,
)

COLOUR_CHANNELS = {"r", "g", "b", "lab_a", "lab_b"}


@pytest.fixture(scope="module")
def enc() -> AttributesHead:
    return AttributesHead()


def set_channels(q: EncodedQuery) -> set[str]:
    return {name for name, ch in CHANNELS.items() if q.weights[ch.index] > 0}


def target(q: EncodedQuery, name: str) -> float:
    return float(q.targets[CHANNELS[name].index])


def weight(q: EncodedQuery, name: str) -> float:
    return float(q.weights[CHANNELS[name].index])


def q_score(q: EncodedQuery, cells: np.ndarray) -> np.ndarray:
    """The graph's participatory score, Q = exp(-sum_c w_c (x_c - t_c)^2), for cells [N, 40]."""
    return np.exp(-((cells - q.targets) ** 2 * q.weights).sum(axis=1))


def cell(**values: float) -> np.ndarray:
    """A mid-grey, centred, still, text-free cell with some channels overridden."""
    x = np.zeros(NUM_CHANNELS, dtype=np.float32)
    rgb = {"r": 0.5, "g": 0.5, "b": 0.5}
    rgb.update({k: v for k, v in values.items() if k in rgb})
    lab = srgb_to_lab(np.array([rgb["r"], rgb["g"], rgb["b"]]))
    defaults = {**rgb, "lab_a": (lab[1] + 128) / 255, "lab_b": (lab[2] + 128) / 255, "pos_x": 0.5, "pos_y": 0.5}
    for name, v in {**defaults, **values}.items():
        x[CHANNELS[name].index] = v
    return x


# ---------------------------------------------------------------------------------------------- Lab
@pytest.mark.parametrize("rgb, lab", [
    ((1, 0, 0), (53.24, 80.09, 67.20)),
    ((0, 1, 0), (87.73, -86.18, 83.18)),
    ((0, 0, 1), (32.30, 79.19, -107.86)),
    ((1, 1, 1), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((0.5, 0.5, 0.5), (53.39, 0.0, 0.0)),
])
def test_srgb_to_lab_known_values(rgb, lab):
    np.testing.assert_allclose(srgb_to_lab(np.array(rgb, dtype=float)), lab, atol=0.1)


def test_srgb_to_lab_batched_shape():
    out = srgb_to_lab(np.random.default_rng(0).random((4, 5, 3)))
    assert out.shape == (4, 5, 3)
    with pytest.raises(QueryError):
        srgb_to_lab(np.zeros((4, 2)))


# ---------------------------------------------------------------------------------------------- colours
def test_css4_table_shipped_and_complete():
    table = css4_colours()
    assert len(table) == 148
    assert table["red"] == "#ff0000" and table["rebeccapurple"] == "#663399"
    assert all(len(v) == 7 and v.startswith("#") for v in table.values())


def test_red_sets_only_colour_channels(enc):
    q = enc.encode("red")
    assert q.has_query and q.terms == ("red",) and q.ignored == ()
    assert set_channels(q) == COLOUR_CHANNELS
    assert target(q, "lab_a") > 0.7 and target(q, "lab_b") > 0.6
    assert (target(q, "r"), target(q, "g"), target(q, "b")) == (1.0, 0.0, 0.0)
    assert weight(q, "lab_a") == weight(q, "lab_b") == COLOUR_AB_WEIGHT
    assert weight(q, "r") == COLOUR_RGB_WEIGHT


def test_achromatic_colours_lean_on_rgb(enc):
    white, black = enc.encode("white"), enc.encode("black")
    for q in (white, black):
        assert set_channels(q) == COLOUR_CHANNELS
        assert weight(q, "r") == ACHROMATIC_RGB_WEIGHT
        assert weight(q, "lab_a") < COLOUR_AB_WEIGHT
    np.testing.assert_allclose(white.targets[[CHANNELS["lab_a"].index, CHANNELS["lab_b"].index]],
                               black.targets[[CHANNELS["lab_a"].index, CHANNELS["lab_b"].index]], atol=1e-6)
    assert target(white, "r") == 1.0 and target(black, "r") == 0.0


def test_two_word_colour_equals_joined_name(enc):
    a, b = enc.encode("dark red"), enc.encode("darkred")
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert a.terms == ("dark red",) and b.terms == ("darkred",)
    assert enc.encode("light goldenrod yellow").terms == ("light goldenrod yellow",)
    assert enc.encode("Dark-Red!").terms == ("dark red",)


def test_every_css4_colour_encodes_in_range(enc):
    for name in css4_colours():
        q = enc.encode(name)
        assert q.terms == (name,) and set_channels(q) == COLOUR_CHANNELS
        for ch in COLOUR_CHANNELS:
            assert CHANNELS[ch].low <= target(q, ch) <= CHANNELS[ch].high


def test_only_first_colour_used(enc):
    q = enc.encode("red or blue")
    assert q.terms == ("red",) and q.ignored == ("blue",)
    np.testing.assert_array_equal(q.targets, enc.encode("red").targets)
    assert enc.encode("navy blue").terms == ("navy",)  # not a CSS4 name when joined
    assert enc.encode("red red").terms == ("red",)


def test_q_ranks_red_cell_above_blue_and_grey(enc):
    q = enc.encode("red")
    cells = np.stack([cell(r=0.9, g=0.1, b=0.1), cell(r=0.1, g=0.1, b=0.9), cell(), cell(r=0.55, g=0.1, b=0.1)])
    red, blue, grey, dark_red = q_score(q, cells)
    assert red > 0.5 and red > dark_red > grey and red > blue


def test_q_separates_white_grey_black(enc):
    cells = np.stack([cell(r=1, g=1, b=1), cell(), cell(r=0, g=0, b=0)])
    for word, best in (("white", 0), ("grey", 1), ("black", 2)):
        assert int(np.argmax(q_score(enc.encode(word), cells))) == best


# ---------------------------------------------------------------------------------------------- other families
@pytest.mark.parametrize("word", ["text", "signs", "plate", "formula", "handwriting", "subtitles", "license plate"])
def test_text_words(enc, word):
    q = enc.encode(word)
    assert q.terms == (word,) and set_channels(q) == {"text", "stroke"}
    assert target(q, "text") == 1.0 and weight(q, "text") == TEXT_WEIGHT
    assert target(q, "stroke") == 1.0 and weight(q, "stroke") == 1.0


def test_agreeing_text_words_do_not_add_weight(enc):
    q = enc.encode("the text on a sign")
    assert q.terms == ("text", "sign") and weight(q, "text") == TEXT_WEIGHT


@pytest.mark.parametrize("word", ["moving", "running", "driving", "fast", "motion"])
def test_motion_words(enc, word):
    q = enc.encode(word)
    assert set_channels(q) == {"motion"}
    assert target(q, "motion") == 1.0 and weight(q, "motion") == MOTION_WEIGHT


@pytest.mark.parametrize("query, expected", [
    ("left", {"pos_x": 0.0}),
    ("right", {"pos_x": 1.0}),
    ("top", {"pos_y": 0.0}),
    ("upper", {"pos_y": 0.0}),
    ("bottom", {"pos_y": 1.0}),
    ("lower", {"pos_y": 1.0}),
    ("top left", {"pos_x": 0.0, "pos_y": 0.0}),
    ("bottom right corner", {"pos_x": 1.0, "pos_y": 1.0}),
    ("middle left", {"pos_x": 0.0, "pos_y": 0.5}),
    ("top centre", {"pos_x": 0.5, "pos_y": 0.0}),
    ("centre", {"eccentricity": 0.0}),
    ("in the center", {"eccentricity": 0.0}),
])
def test_position_words(enc, query, expected):
    q = enc.encode(query)
    assert set_channels(q) == set(expected)
    for name, t in expected.items():
        assert target(q, name) == t
        assert weight(q, name) == POSITION_WEIGHT


def test_conflicting_position_ignored(enc):
    q = enc.encode("left or right")
    assert q.terms == ("left",) and q.ignored == ("right",)


def test_families_combine(enc):
    q = enc.encode("Dark blue moving text, top left!")
    assert q.terms == ("dark blue", "moving", "text", "top", "left")
    assert set_channels(q) == COLOUR_CHANNELS | {"motion", "text", "stroke", "pos_x", "pos_y"}


def test_red_car_terms_and_ignored(enc):
    q = enc.encode("where is the red car?")
    assert q.text == "where is the red car?"
    assert q.terms == ("red",) and q.ignored == ("car",)


# ---------------------------------------------------------------------------------------------- errors, warning
def test_none_is_query_free(enc):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = enc.encode(None)
    assert not q.has_query and q.text is None and q.terms == () and q.ignored == ()
    assert q.weights.dtype == np.float32 and q.weights.shape == (NUM_CHANNELS,)


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_query_raises(enc, query):
    with pytest.raises(QueryError, match="empty query"):
        enc.encode(query)


@pytest.mark.parametrize("query", [3, b"red", ["red"]])
def test_non_str_query_raises(enc, query):
    with pytest.raises(QueryError, match=type(query).__name__):
        enc.encode(query)


def test_unusable_query_warns_and_is_query_free(enc):
    with pytest.warns(QueryWarning, match="the car on the street.*query-free"):
        q = enc.encode("the car on the street")
    assert not q.has_query and q.terms == () and q.ignored == ("car", "street")
    assert issubclass(QueryWarning, UserWarning)
    with pytest.warns(QueryWarning):
        assert enc.encode("???").ignored == ()


def test_head_registry():
    assert head_type("attributes") is AttributesHead
    assert issubclass(HEADS["attributes"], QueryHead)
    with pytest.raises(QueryError, match="'nope'.*attributes"):
        head_type("nope")
    with pytest.raises(ValueError):
        head_type("nope")
    assert issubclass(QueryError, ArrCocError)


def test_encoded_query_validates_and_is_read_only():
    with pytest.raises(QueryError):
        AttributeQuery.make("x", np.zeros(3), np.zeros(NUM_CHANNELS))
    with pytest.raises(QueryError):
        AttributeQuery.make("x", -np.ones(NUM_CHANNELS), np.zeros(NUM_CHANNELS))
    with pytest.raises(QueryError, match="finite"):
        EncodedQuery("x", {"v": np.array([np.nan])})
    q = AttributeQuery.query_free()
    with pytest.raises(ValueError):
        q.weights[0] = 1.0
    assert q["query_weights"] is q.weights


# ---------------------------------------------------------------------------------------------- batching
def test_stack_queries(enc):
    qs = [enc.encode("red"), enc.encode(None), enc.encode("text on the left")]
    stacked = enc.stack(qs)
    assert list(stacked) == [s.name for s in enc.query_inputs()] == ["query_weights", "query_targets"]
    w, t = stacked["query_weights"], stacked["query_targets"]
    assert w.shape == t.shape == (3, NUM_CHANNELS)
    assert w.dtype == t.dtype == torch.float32
    assert (w.sum(dim=1) > 0).tolist() == [True, False, True]
    np.testing.assert_array_equal(t[2].numpy(), qs[2].targets)
    with pytest.raises(QueryError):
        enc.stack([])
    with pytest.raises(QueryError):
        enc.stack(["red"])
    with pytest.raises(QueryError, match="query 0 has nothing for query_weights"):
        enc.stack([EncodedQuery("x", {"text_emb": np.ones(4)})])


def test_no_matplotlib_at_run_time():
    """The colour table ships as JSON; matplotlib is only the one-off generator, never an import."""
    tree = ast.parse(Path(query_module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith("matplotlib") for name in imported)
