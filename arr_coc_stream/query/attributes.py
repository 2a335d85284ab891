"""The ``attributes`` query head (offline default): colour, text, motion and position words.

The head turns a query into per-channel Gaussian weights and targets, ``query_weights [C]`` and
``query_targets [C]`` (C channels, see :mod:`arr_coc_stream.channels`), and its scorer matches a cell with
texture vector ``x`` as::

    match(cell) = exp(-sum_c weights[c] * (x[c] - targets[c]) ** 2)

and a stream has a query iff ``sum(weights) > 0``. It understands four word families and nothing else. Its
limits, plainly:

- **No nouns or objects.** "the red car" is read as "red"; "car" lands in :attr:`EncodedQuery.ignored`.
- **Colours** are the 148 CSS4 names, also written in parts ("dark red", "light goldenrod yellow") when the
  joined words are a CSS4 name. "navy blue" is *not* one name: it reads as "navy" and a second colour "blue".
  Nouns that are CSS4 names (orange, tomato, salmon, chocolate, snow...) are read as colours.
- **One colour per query**: a Gaussian has one centre, so the first colour wins and later ones go to
  ``ignored`` ("red or blue" cannot be expressed).
- **AND semantics**: all recognised terms multiply ("red text on the left" wants cells that are red *and*
  text-like *and* on the left). Negation and "or" are not understood ("not red" still means red).
- Text words ask for text-like texture, not for a particular string; motion words ask for moving cells, not a
  kind of motion; position words split the frame in halves/centre, not finer.
- Within a channel the first term wins: a later term asking for a different target on the same channel
  ("left ... right") goes to ``ignored``; a repeated or agreeing term ("text on a sign") is kept without
  adding weight.

A query with no usable word gives a :class:`~arr_coc_stream.query.QueryWarning` and query-free relevance, never a
guess.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from ..channels import CHANNELS, NUM_CHANNELS
from ..errors import QueryError
from ..spec import TensorSpec
from .base import EncodedQuery, QueryHead, QueryScorer, QueryWarning, check_text

# Weights of the attribute encoder; read at encode time, so the engine may tune them.
COLOUR_AB_WEIGHT = 40.0       # per channel, lab_a and lab_b, chromatic colours
COLOUR_RGB_WEIGHT = 3.0       # per channel, r g b, chromatic colours
ACHROMATIC_AB_WEIGHT = 10.0   # lab_a/lab_b weight for colours with chroma C* < ACHROMATIC_CHROMA
ACHROMATIC_RGB_WEIGHT = 12.0  # r/g/b weight for those: separates white, grey and black (same a*, b*)
ACHROMATIC_CHROMA = 10.0
TEXT_WEIGHT = 6.0             # on `text`
STROKE_WEIGHT = 1.0           # on `stroke`, with every text word
MOTION_WEIGHT = 4.0           # on `motion`
POSITION_WEIGHT = 3.0         # on `pos_x` / `pos_y`
CENTRE_WEIGHT = 3.0           # on `eccentricity` (target 0) for centre/center/middle alone


class AttributeQuery(EncodedQuery):
    """An :class:`EncodedQuery` of the attributes head: ``query_weights`` and ``query_targets``, [C] float32 each,
    indexed by the channel registry; weights >= 0, targets inside each channel's declared range."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("query_weights", "query_targets"):
            value = self.tensors.get(name)
            if value is None or value.shape != (NUM_CHANNELS,):
                raise QueryError(f"AttributeQuery.{name} must have shape ({NUM_CHANNELS},), got "
                                 f"{None if value is None else value.shape}")
        if np.any(self.weights < 0):
            raise QueryError(f"AttributeQuery.query_weights must be >= 0, got min {float(self.weights.min())}")

    @property
    def weights(self) -> np.ndarray:
        return self.tensors["query_weights"]

    @property
    def targets(self) -> np.ndarray:
        return self.tensors["query_targets"]

    @classmethod
    def make(cls, text: str | None, weights: np.ndarray, targets: np.ndarray, terms: tuple[str, ...] = (),
             ignored: tuple[str, ...] = ()) -> AttributeQuery:
        return cls(text, {"query_weights": weights, "query_targets": targets}, terms, ignored)

    @classmethod
    def query_free(cls, text: str | None = None, ignored: tuple[str, ...] = ()) -> AttributeQuery:
        """An all-zero query: the graph computes relevance without query coupling."""
        zeros = np.zeros(NUM_CHANNELS, dtype=np.float32)
        return cls.make(text, zeros, zeros, (), ignored)


def gaussian_match(tex: Tensor, query_weights: Tensor, query_targets: Tensor) -> Tensor:
    """The attributes head's match: a product of Gaussians over the channels the query weighs.

    Args:
        tex: [B, C, gh, gw] texture. query_weights, query_targets: [B, C].

    Returns:
        [B, gh, gw] in [0, 1] (1 everywhere for a stream without a query: see :func:`has_query`).
    """
    w = query_weights[:, :, None, None]
    t = query_targets[:, :, None, None]
    return torch.exp(-(w * (tex - t) ** 2).sum(dim=1))


def has_query(query_weights: Tensor) -> Tensor:
    """1.0 for streams with a query, 0.0 without. [B, C] -> [B]."""
    return (query_weights.sum(dim=1) > 0).to(query_weights.dtype)


class AttributeScorer(QueryScorer):
    """The attributes head in the graph: :func:`gaussian_match` over the whole texture."""

    def forward(self, tex: Tensor, inputs: Mapping[str, Tensor], prepared: Mapping[str, Tensor]
                ) -> tuple[Tensor, Tensor]:
        return gaussian_match(tex, inputs["query_weights"], inputs["query_targets"]), has_query(inputs["query_weights"])


# ---------------------------------------------------------------------------------------------- colour
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = _SRGB_TO_XYZ.sum(axis=1)  # (0.95047, 1.0, 1.08883): sRGB white maps to exactly a* = b* = 0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert gamma-encoded sRGB in [0, 1] to CIE Lab (D65, 2 degree observer).

    Shape:
        ``rgb [..., 3]`` -> ``lab [..., 3]`` (float64; L in [0, 100], a and b roughly [-128, 127]).
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1:] != (3,):
        raise QueryError(f"srgb_to_lab expects a trailing axis of 3, got shape {rgb.shape}")
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _WHITE_D65  # [..., 3], white -> (1, 1, 1)
    delta = 6.0 / 29.0
    f = np.where(xyz > delta ** 3, np.cbrt(xyz), xyz / (3 * delta ** 2) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


@lru_cache(maxsize=1)
def _css4_table() -> dict[str, str]:
    text = resources.files("arr_coc_stream").joinpath("data/css4_colors.json").read_text(encoding="utf-8")
    return json.loads(text)


def css4_colours() -> dict[str, str]:
    """The CSS4 colour table shipped with the package: name -> ``"#rrggbb"`` (148 names)."""
    return dict(_css4_table())


def _hex_to_rgb(hex_code: str) -> np.ndarray:
    return np.array([int(hex_code[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64) / 255.0


# ---------------------------------------------------------------------------------------------- words
_TEXT_WORDS = frozenset("""
    text texts sign signs signage plate plates number numbers formula formulas formulae writing written word
    words letter letters caption captions subtitle subtitles label labels page pages document documents
    handwriting handwritten
""".split())
_TEXT_PHRASES = frozenset({"licence plate", "license plate", "number plate", "licence plates", "license plates",
                           "number plates"})
_MOTION_WORDS = frozenset("""
    moving move moves moved running runs walking walks driving drives flying flies motion fast rolling rolls
""".split())
_POSITION_WORDS = {  # word -> (channel, target)
    "left": ("pos_x", 0.0), "right": ("pos_x", 1.0),
    "top": ("pos_y", 0.0), "upper": ("pos_y", 0.0), "bottom": ("pos_y", 1.0), "lower": ("pos_y", 1.0),
}
_CENTRE_WORDS = frozenset({"centre", "center", "middle", "central"})
_STOP_WORDS = frozenset("""
    a an the this that these those there here it its is are was were be been being am do does did
    where wheres whats theres what which who whom whose when how why
    of in on at by for from to into onto over under near next with without within and or but as than
    find show me locate look looking see spot highlight give get point focus any some all each every
    my your our their his her i you we they please can could would should will just only also
    part parts region regions area areas side sides corner corners thing things something stuff
    color colour colors colours colored coloured one ones s
""".split())
_MAX_PHRASE = 4  # "light golden rod yellow" -> lightgoldenrodyellow


def _tokenise(query: str) -> list[str]:
    text = re.sub(r"['\u2019]", "", query.lower())  # "what's" -> "whats"
    return re.sub(r"[\W_]+", " ", text).split()


class AttributesHead(QueryHead):
    """Offline query head for colour, text, motion and position words (limits: see the module docstring).

    Example:
        >>> q = AttributesHead().encode("where is the red car?")
        >>> q.terms, q.ignored
        (('red',), ('car',))
    """

    name = "attributes"

    def query_inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("query_weights", (NUM_CHANNELS,), "float32", "Gaussian weight per channel, >= 0"),
                TensorSpec("query_targets", (NUM_CHANNELS,), "float32", "Gaussian centre per channel"))

    def scorer(self) -> AttributeScorer:
        return AttributeScorer()

    def encode(self, query: str | None) -> AttributeQuery:
        if query is None:
            return AttributeQuery.query_free()
        check_text(query)

        weights = np.zeros(NUM_CHANNELS, dtype=np.float32)
        targets = np.zeros(NUM_CHANNELS, dtype=np.float32)
        set_channels: dict[str, float] = {}  # channel -> target; the first term on a channel wins
        used: dict[str, int] = {}  # term -> position in the query
        unused: dict[str, int] = {}

        def apply(pos: int, term: str, spec: list[tuple[str, float, float]]) -> None:
            """Use ``term``: (channel, target, weight) for each entry, or ignore it if a target conflicts."""
            if any(ch in set_channels and not np.isclose(set_channels[ch], t) for ch, t, _ in spec):
                unused.setdefault(term, pos)
                return
            for ch, t, w in spec:
                if ch not in set_channels:
                    set_channels[ch] = t
                    targets[CHANNELS[ch].index] = t
                    weights[CHANNELS[ch].index] = w
            used.setdefault(term, pos)

        colour_key: str | None = None
        positions: list[tuple[int, str]] = []  # resolved after the scan: "left" may follow "middle"
        centres: list[tuple[int, str]] = []
        for pos, (phrase, key, kind) in enumerate(_scan(_tokenise(query))):
            if kind == "colour":
                if colour_key is None:
                    colour_key = key
                    apply(pos, phrase, _colour_spec(key))
                elif key == colour_key:
                    used.setdefault(phrase, pos)  # the same colour again ("red ... dark red" is not)
                else:
                    unused.setdefault(phrase, pos)  # one Gaussian, one colour
            elif kind == "text":
                apply(pos, phrase, [("text", 1.0, TEXT_WEIGHT), ("stroke", 1.0, STROKE_WEIGHT)])
            elif kind == "motion":
                apply(pos, phrase, [("motion", 1.0, MOTION_WEIGHT)])
            elif kind == "position":
                positions.append((pos, phrase))
            elif kind == "centre":
                centres.append((pos, phrase))
            elif kind == "unknown":
                unused.setdefault(phrase, pos)

        for pos, word in positions:
            channel, target = _POSITION_WORDS[word]
            apply(pos, word, [(channel, target, POSITION_WEIGHT)])
        for pos, word in centres:  # "middle left" -> pos_y 0.5; "top centre" -> pos_x 0.5; alone -> eccentricity 0
            has_x, has_y = "pos_x" in set_channels, "pos_y" in set_channels
            if has_x and has_y:
                unused.setdefault(word, pos)
            elif has_x or has_y:
                apply(pos, word, [("pos_y" if has_x else "pos_x", 0.5, POSITION_WEIGHT)])
            else:
                apply(pos, word, [("eccentricity", 0.0, CENTRE_WEIGHT)])

        terms = tuple(sorted(used, key=used.__getitem__))
        ignored = tuple(sorted(unused, key=unused.__getitem__))
        if not terms:
            warnings.warn(QueryWarning(
                f"query {query!r} has no word the attribute encoder understands (colours, text, motion, "
                f"position); relevance is query-free"), stacklevel=2)
            return AttributeQuery.query_free(query, ignored)
        return AttributeQuery.make(query, weights, targets, terms, ignored)


def _scan(tokens: list[str]):
    """Yield ``(phrase as written, lookup key, kind)``, longest phrase first.

    ``kind`` is colour, text, motion, position, centre, stop or unknown; only joined words that form a CSS4 name or
    a text phrase ("licence plate") make a multi-word phrase.
    """
    table = _css4_table()
    i = 0
    while i < len(tokens):
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            words = tokens[i:i + n]
            phrase, joined = " ".join(words), "".join(words)
            if joined in table:
                kind = "colour"
            elif phrase in _TEXT_PHRASES or (n == 1 and phrase in _TEXT_WORDS):
                kind = "text"
            elif n > 1:
                continue
            elif phrase in _MOTION_WORDS:
                kind = "motion"
            elif phrase in _POSITION_WORDS:
                kind = "position"
            elif phrase in _CENTRE_WORDS:
                kind = "centre"
            elif phrase in _STOP_WORDS:
                kind = "stop"
            else:
                kind = "unknown"
            yield phrase, joined, kind
            i += n
            break


@lru_cache(maxsize=None)
def _colour_lab_rgb(key: str) -> tuple[np.ndarray, np.ndarray]:
    rgb = _hex_to_rgb(_css4_table()[key])
    return srgb_to_lab(rgb), rgb


def _colour_spec(key: str) -> list[tuple[str, float, float]]:
    """(channel, target, weight) for CSS4 colour ``key``: a*, b* (channel (v + 128) / 255) and sRGB."""
    lab, rgb = _colour_lab_rgb(key)
    achromatic = float(np.hypot(lab[1], lab[2])) < ACHROMATIC_CHROMA
    w_ab = ACHROMATIC_AB_WEIGHT if achromatic else COLOUR_AB_WEIGHT
    w_rgb = ACHROMATIC_RGB_WEIGHT if achromatic else COLOUR_RGB_WEIGHT
    a_t, b_t = (float(np.clip((v + 128.0) / 255.0, 0.0, 1.0)) for v in lab[1:])
    return [("lab_a", a_t, w_ab), ("lab_b", b_t, w_ab),
            ("r", float(rgb[0]), w_rgb), ("g", float(rgb[1]), w_rgb), ("b", float(rgb[2]), w_rgb)]
