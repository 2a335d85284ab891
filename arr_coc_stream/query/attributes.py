"""The ``attributes`` query head (offline default): colour, text, motion and position words.

The head turns a query into three inputs: ``query_colour [COLOUR_BINS]``, the membership of every quantised RGB
colour in the query's colour words (:mod:`arr_coc_stream.query.colours`: calibrated on human colour naming, in
CIELAB), and per-channel Gaussian weights and targets ``query_weights [C]``, ``query_targets [C]`` for the other
words (C channels, see :mod:`arr_coc_stream.channels`). Its scorer matches a cell with texture vector ``x`` as::

    match(cell) = colour(cell) * exp(-sum_c weights[c] * (x[c] - targets[c]) ** 2)

where ``colour(cell)`` is ``min(1, share / 0.75)`` of the mean membership of the cell's pixels (``share``, the share of
the cell that is the colour: a cell three quarters covered is a full match; 1 for a query without colour words), and a stream has a query iff it has a colour word or ``sum(weights) > 0``. It
understands four word families and nothing else. Its limits, plainly:

- **No nouns or objects.** "the red car" is read as "red"; "car" lands in :attr:`EncodedQuery.ignored`, with a
  :class:`~arr_coc_stream.query.QueryWarning` that points to the clip head.
- **Colours**: the basic words (red, orange, yellow, green, blue, purple, pink, brown, white, grey/gray, black,
  and "-ish" forms), every CSS4 name, every multi-word XKCD survey name ("dark green", "sky blue", "orange-red",
  "navy blue") and the single XKCD names that head others ("teal", "lime", "maroon"). Single survey names that are
  mostly nouns ("sky", "grass", "dirt") are not colours here. Several colours are OR-ed ("red or blue", "red and
  white" both want cells of either colour).
- **AND semantics across families**: colour, text, motion and position terms multiply ("red text on the left"
  wants cells that are red *and* text-like *and* on the left). Negation is not understood ("not red" still means
  red).
- Text words ask for text-like texture, not for a particular string; motion words ask for moving cells, not a
  kind of motion; position words split the frame in halves/centre, not finer.
- Within a channel the first term wins: a later term asking for a different target on the same channel
  ("left ... right") goes to ``ignored``; a repeated or agreeing term ("text on a sign") is kept without
  adding weight.

A query with no usable word gives a :class:`~arr_coc_stream.query.QueryWarning` and query-free relevance, never a
guess.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..channels import CHANNELS, NUM_CHANNELS
from ..errors import QueryError
from ..spec import TensorSpec
from ..texture import to_grid
from .base import EncodedQuery, QueryHead, QueryScorer, QueryWarning, check_text
from .colours import COLOUR_BINS, COLOUR_LEVELS, colour_term, membership

# Weights of the attribute encoder; read at encode time, so the engine may tune them.
TEXT_WEIGHT = 6.0  # on `text`
STROKE_WEIGHT = 1.0  # on `stroke`, with every text word
MOTION_WEIGHT = 4.0  # on `motion`
POSITION_WEIGHT = 3.0  # on `pos_x` / `pos_y`
# A cell at least this share covered by the colour is a full colour match (a cell mostly the colour is the
# colour; below that the share keeps cells in order): the match is min(1, share / COLOUR_FULL_SHARE).
COLOUR_FULL_SHARE = 0.75
CENTRE_WEIGHT = 3.0  # on `eccentricity` (target 0) for centre/center/middle alone
_INPUTS = ("query_weights", "query_targets", "query_colour")


class AttributeQuery(EncodedQuery):
    """An :class:`EncodedQuery` of the attributes head: ``query_weights`` and ``query_targets``, [C] float32 each,
    indexed by the channel registry (weights >= 0, targets inside each channel's declared range), and
    ``query_colour`` [COLOUR_BINS] float32 in [0, 1] (all zeros without a colour word)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        shapes = {"query_weights": (NUM_CHANNELS,), "query_targets": (NUM_CHANNELS,), "query_colour": (COLOUR_BINS,)}
        for name, shape in shapes.items():
            value = self.tensors.get(name)
            if value is None or value.shape != shape:
                raise QueryError(
                    f"AttributeQuery.{name} must have shape {shape}, got {None if value is None else value.shape}"
                )
        if np.any(self.weights < 0):
            raise QueryError(f"AttributeQuery.query_weights must be >= 0, got min {float(self.weights.min())}")
        if np.any((self.colour < 0) | (self.colour > 1)):
            raise QueryError("AttributeQuery.query_colour must be in [0, 1]")

    @property
    def weights(self) -> np.ndarray:
        return self.tensors["query_weights"]

    @property
    def targets(self) -> np.ndarray:
        return self.tensors["query_targets"]

    @property
    def colour(self) -> np.ndarray:
        return self.tensors["query_colour"]

    @classmethod
    def make(
        cls,
        text: str | None,
        weights: np.ndarray,
        targets: np.ndarray,
        colour: np.ndarray | None = None,
        terms: tuple[str, ...] = (),
        ignored: tuple[str, ...] = (),
    ) -> AttributeQuery:
        colour = np.zeros(COLOUR_BINS, dtype=np.float32) if colour is None else colour
        return cls(text, {"query_weights": weights, "query_targets": targets, "query_colour": colour}, terms, ignored)

    @classmethod
    def query_free(cls, text: str | None = None, ignored: tuple[str, ...] = ()) -> AttributeQuery:
        """An all-zero query: the graph computes relevance without query coupling."""
        zeros = np.zeros(NUM_CHANNELS, dtype=np.float32)
        return cls.make(text, zeros, zeros, None, (), ignored)


def gaussian_match(tex: Tensor, query_weights: Tensor, query_targets: Tensor) -> Tensor:
    """The match of the channel terms (text, motion, position): a product of Gaussians over the weighed channels.

    Args:
        tex: [B, C, gh, gw] texture. query_weights, query_targets: [B, C].

    Returns:
        [B, gh, gw] in [0, 1] (1 everywhere for a stream without channel terms).
    """
    w = query_weights[:, :, None, None]
    t = query_targets[:, :, None, None]
    return torch.exp(-(w * (tex - t) ** 2).sum(dim=1))


def colour_match(rgb: Tensor, query_colour: Tensor, cell_px: int) -> Tensor:
    """Share of each cell's pixels that are the query's colour: the membership table gathered per pixel, averaged
    per cell. A static Gather plus an average pool, so it exports to ONNX and TensorRT.

    Args:
        rgb: [B, 3, H, W] in [0, 1]. query_colour: [B, COLOUR_BINS] in [0, 1] (see
            :func:`arr_coc_stream.query.colours.colour_index` for the order). cell_px: pixels per cell side.

    Returns:
        [B, H / cell_px, W / cell_px] in [0, 1].
    """
    q = torch.clamp(torch.floor(rgb * COLOUR_LEVELS), 0, COLOUR_LEVELS - 1)  # [B, 3, H, W]
    # the index in float32 (exact below 2^24), cast once: a third of the int64 cast of q
    index = ((q[:, 0] * COLOUR_LEVELS + q[:, 1]) * COLOUR_LEVELS + q[:, 2]).to(torch.int64)  # [B, H, W]
    member = torch.gather(query_colour, 1, index.flatten(1)).view(index.shape)
    return to_grid(member[:, None], cell_px)[:, 0]


def has_colour(query_colour: Tensor) -> Tensor:
    """1.0 for streams whose query names a colour, else 0.0. [B, COLOUR_BINS] -> [B]."""
    return (query_colour.amax(dim=1) > 0).to(query_colour.dtype)


def has_query(query_weights: Tensor, query_colour: Tensor) -> Tensor:
    """1.0 for streams with a query (a colour word or a channel term), 0.0 without. [B, C], [B, COLOUR_BINS] -> [B]."""
    return torch.maximum((query_weights.sum(dim=1) > 0).to(query_weights.dtype), has_colour(query_colour))


class AttributeScorer(QueryScorer):
    """The attributes head in the graph: :func:`colour_match` times :func:`gaussian_match`."""

    def forward(
        self, tex: Tensor, rgb: Tensor, inputs: Mapping[str, Tensor], prepared: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        colour = inputs["query_colour"]
        on = has_colour(colour)[:, None, None]
        cell_px = rgb.shape[-1] // tex.shape[-1]
        share = torch.clamp(colour_match(rgb, colour, cell_px) / COLOUR_FULL_SHARE, 0.0, 1.0)
        match = (on * share + (1.0 - on)) * gaussian_match(tex, inputs["query_weights"], inputs["query_targets"])
        return match, has_query(inputs["query_weights"], colour)


# ---------------------------------------------------------------------------------------------- words
_TEXT_WORDS = frozenset(
    """
    text texts sign signs signage plate plates number numbers formula formulas formulae writing written word
    words letter letters caption captions subtitle subtitles label labels page pages document documents
    handwriting handwritten
""".split()
)
_TEXT_PHRASES = frozenset(
    {"licence plate", "license plate", "number plate", "licence plates", "license plates", "number plates"}
)
_MOTION_WORDS = frozenset(
    """
    moving move moves moved running runs walking walks driving drives flying flies motion fast rolling rolls
""".split()
)
_POSITION_WORDS = {  # word -> (channel, target)
    "left": ("pos_x", 0.0),
    "right": ("pos_x", 1.0),
    "top": ("pos_y", 0.0),
    "upper": ("pos_y", 0.0),
    "bottom": ("pos_y", 1.0),
    "lower": ("pos_y", 1.0),
}
_CENTRE_WORDS = frozenset({"centre", "center", "middle", "central"})
_STOP_WORDS = frozenset(
    """
    a an the this that these those there here it its is are was were be been being am do does did
    where wheres whats theres what which who whom whose when how why
    of in on at by for from to into onto over under near next with without within and or but as than
    find show me locate look looking see spot highlight give get point focus any some all each every
    my your our their his her i you we they please can could would should will just only also
    part parts region regions area areas side sides corner corners thing things something stuff
    color colour colors colours colored coloured one ones s
""".split()
)
_MAX_PHRASE = 4  # "light golden rod yellow" -> lightgoldenrodyellow


def _tokenise(query: str) -> list[str]:
    text = re.sub(r"['\u2019]", "", query.lower())  # "what's" -> "whats"
    return re.sub(r"[\W_]+", " ", text).split()


class AttributesHead(QueryHead):
    """Offline query head for colour, text, motion and position words (limits: see the module docstring).

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     q = AttributesHead().encode("where is the red car?")
        >>> q.terms, q.ignored
        (('red',), ('car',))
    """

    name = "attributes"

    def query_inputs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("query_weights", (NUM_CHANNELS,), "float32", "Gaussian weight per channel, >= 0"),
            TensorSpec("query_targets", (NUM_CHANNELS,), "float32", "Gaussian centre per channel"),
            TensorSpec(
                "query_colour",
                (COLOUR_BINS,),
                "float32",
                "membership of each quantised RGB colour in the query's colours, in [0, 1]; zeros: none",
            ),
        )

    def scorer(self) -> AttributeScorer:
        return AttributeScorer()

    def encode(self, query: str | None) -> AttributeQuery:
        if query is None or not check_text(query):
            return AttributeQuery.query_free(query)

        weights = np.zeros(NUM_CHANNELS, dtype=np.float32)
        targets = np.zeros(NUM_CHANNELS, dtype=np.float32)
        colour = np.zeros(COLOUR_BINS, dtype=np.float32)
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

        positions: list[tuple[int, str]] = []  # resolved after the scan: "left" may follow "middle"
        centres: list[tuple[int, str]] = []
        for pos, (phrase, term, kind) in enumerate(_scan(_tokenise(query))):
            if kind == "colour":
                np.maximum(colour, membership(*term), out=colour)  # colours are OR-ed
                used.setdefault(phrase, pos)
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
            warnings.warn(
                QueryWarning(
                    f"query {query!r} has no word the attributes head understands (colours, text, motion, position); "
                    f"relevance is query-free. For objects ({', '.join(ignored) or 'none named'}) use "
                    f"query_encoder='clip'"
                ),
                stacklevel=2,
            )
            return AttributeQuery.query_free(query, ignored)
        if ignored:
            warnings.warn(
                QueryWarning(
                    f"query {query!r}: ignored {', '.join(repr(w) for w in ignored)}, using "
                    f"{', '.join(repr(t) for t in terms)}; the attributes head knows colours, text, motion and position "
                    f"words only: for objects use query_encoder='clip'"
                ),
                stacklevel=2,
            )
        return AttributeQuery.make(query, weights, targets, colour if colour.any() else None, terms, ignored)


def _scan(tokens: list[str]):
    """Yield ``(phrase as written, term, kind)``, longest phrase first.

    ``kind`` is colour (``term`` is its (modifiers, family), see :func:`~arr_coc_stream.query.colours.colour_term`),
    text, motion, position, centre, stop or unknown; only words that together name a colour or a text phrase
    ("licence plate") make a multi-word phrase.
    """
    i = 0
    while i < len(tokens):
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            words = tokens[i : i + n]
            phrase = " ".join(words)
            term = colour_term(words)
            if term is not None:
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
            yield phrase, term, kind
            i += n
            break
