"""Colour words grounded in human colour naming, as a membership table over quantised RGB.

A colour word is not one RGB value: real sky around RGB (0.31, 0.44, 0.65) is what people call blue, yet it is far
from #0000FF. The vocabulary here is the XKCD colour survey (949 names people gave to colours) and the 148 CSS4
names, both shipped in ``arr_coc_stream/data``. A name's *family* is its last word ("sky blue" -> blue,
"dark teal" -> teal, CSS4 "lightskyblue" -> blue). For a colour term the membership of a colour ``c`` in CIELAB
is the share of nearby named colours that belong to the term (a kernel vote, Gaussian in Delta E with
:data:`SIGMA`)::

    m(c) = sum_{j in term} K(c, name_j) / sum_{j} K(c, name_j),   K = exp(-|c - name_j|^2 / (2 SIGMA^2))

scaled so the best colour scores 1. The terms:

- a basic colour word (red, orange, yellow, green, blue, purple, pink, brown; ``gray`` and "-ish" forms such as
  ``reddish`` as synonyms): every name of that family, on chromatic colours only (a neutral colour, chroma
  C* < ~10, is white, grey or black, even where "alice blue" is the nearest name). Names with no basic term
  ("navy", "teal", "olive") are ambiguous, not counter-examples: they do not vote.
- ``white``, ``grey``, ``black``: by lightness L* and chroma C* (:func:`achromatic`), not by vote.
- ``dark``/``deep``, ``light``/``pale``/``pastel``, ``bright``/``vivid``/``neon``, ``dull``/``muted`` before a
  colour ("dark green", "light blue"): the colour's membership, on colours darker (lighter, more or less chromatic)
  than the median of the colour's survey names.
- any other name, alone ("teal", "crimson") or with other words before its family word ("sky blue", "navy blue",
  "orange-red"): every name of its family that starts with the same words ("sky blue" -> sky blue; "teal" ->
  teal, dark teal, light teal, teal blue ...).

A query's colours are OR-ed: the table holds the maximum over its colour terms. The table is indexed by
:func:`colour_index` of a pixel, so the graph gathers per pixel and averages per cell: a cell's colour match is
the share of its pixels that are the colour. Computed once per query at encode time (the graph stays static).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

from ..errors import QueryError

COLOUR_LEVELS = 32  # quantisation per RGB channel: a bin is 8 of 255 levels wide
COLOUR_BINS = COLOUR_LEVELS**3  # length of the query_colour input
SIGMA = 5.0  # Delta E of the naming kernel: sharp enough that a colour's nearest names decide
BASIC = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "grey", "black")
ACHROMATIC = ("white", "grey", "black")
SYNONYMS = {
    "gray": "grey",
    "reddish": "red",
    "orangish": "orange",
    "orangeish": "orange",
    "orangey": "orange",
    "yellowish": "yellow",
    "greenish": "green",
    "bluish": "blue",
    "blueish": "blue",
    "purplish": "purple",
    "purpleish": "purple",
    "purpley": "purple",
    "purply": "purple",
    "pinkish": "pink",
    "pinky": "pink",
    "brownish": "brown",
    "greyish": "grey",
    "grayish": "grey",
    "whitish": "white",
    "blackish": "black",
}

_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
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
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def colour_index(rgb: np.ndarray) -> np.ndarray:
    """Table index of sRGB colours in [0, 1]: ``r * 32^2 + g * 32 + b`` on 32 levels per channel.

    Shape:
        ``rgb [..., 3]`` -> ``[...]`` int64 in [0, COLOUR_BINS).
    """
    q = np.clip(np.floor(np.asarray(rgb, dtype=np.float64) * COLOUR_LEVELS), 0, COLOUR_LEVELS - 1).astype(np.int64)
    return (q[..., 0] * COLOUR_LEVELS + q[..., 1]) * COLOUR_LEVELS + q[..., 2]


@lru_cache(maxsize=1)
def _bin_lab() -> np.ndarray:
    """CIELAB of every bin's centre, [COLOUR_BINS, 3] in :func:`colour_index` order."""
    levels = (np.arange(COLOUR_LEVELS) + 0.5) / COLOUR_LEVELS
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return srgb_to_lab(np.stack([r, g, b], axis=-1).reshape(-1, 3)).astype(np.float32)


def _read_table(name: str) -> dict[str, str]:
    return json.loads(resources.files("arr_coc_stream").joinpath(f"data/{name}").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def css4_colours() -> dict[str, str]:
    """The CSS4 colour table shipped with the package: name -> ``"#rrggbb"`` (148 names)."""
    return _read_table("css4_colors.json")


@lru_cache(maxsize=1)
def xkcd_colours() -> dict[str, str]:
    """The XKCD colour-survey names shipped with the package (as matplotlib ships them): name -> ``"#rrggbb"``
    (949 names, words separated by spaces, '/' or '-')."""
    return _read_table("xkcd_colors.json")


def _words(name: str) -> list[str]:
    return name.replace("/", " ").replace("-", " ").replace("'", "").split()


@lru_cache(maxsize=1)
def _names() -> tuple[list[str], list[str], np.ndarray]:
    """Every named colour as (key, family, Lab): keys are the words joined ("darkgreen"), so the XKCD "dark green"
    and the CSS4 "darkgreen" are one key with two colours. A name written as one word ("darkgreen",
    "lightskyblue") takes as family the longest family word of the multi-word names it ends with."""
    named = [(_words(n), h) for n, h in xkcd_colours().items()] + [([n], h) for n, h in css4_colours().items()]
    heads = _heads()
    keys = ["".join(words) for words, _ in named]
    families = [SYNONYMS.get(w[-1], w[-1]) if len(w) > 1 else _split(w[0], heads)[1] for w, _ in named]
    rgbs = np.array([_hex_to_rgb(h) for _, h in named])
    return keys, families, srgb_to_lab(rgbs).astype(np.float32)


def _split(joined: str, heads: list[str]) -> tuple[str, str]:
    """(modifiers, family) of a name written joined: the family is the longest known family word it ends with
    ("lightskyblue" -> ("lightsky", "blue")), or the whole name."""
    tail = next((h for h in heads if joined.endswith(h)), joined)
    return joined[: len(joined) - len(tail)], SYNONYMS.get(tail, tail)


@lru_cache(maxsize=1)
def _heads() -> list[str]:
    """The family words, longest first: the basic words, their synonyms and the last word of every multi-word
    XKCD name."""
    multi = [_words(n) for n in xkcd_colours() if len(_words(n)) > 1]
    return sorted({w[-1] for w in multi} | set(BASIC) | set(SYNONYMS), key=len, reverse=True)


def colour_term(words: list[str]) -> tuple[str, str] | None:
    """The colour term that ``words`` name, as (modifiers, family), or None when they name no colour.

    Examples:
        >>> colour_term(["dark", "green"]), colour_term(["lightskyblue"]), colour_term(["car"])
        (('dark', 'green'), ('lightsky', 'blue'), None)
    """
    joined = "".join(words)
    if joined not in vocabulary():
        return None
    if len(words) > 1:
        return "".join(words[:-1]), SYNONYMS.get(words[-1], words[-1])
    return _split(joined, _heads())


@lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Every key :func:`membership` accepts (words joined): the basic words and their synonyms, every CSS4 name,
    every multi-word XKCD name, and the single-word XKCD names that head other names ("teal": "dark teal").

    A single XKCD name that heads nothing ("sky", "grass", "dirt", "dark") is left out: as a word in a query it
    is far more often a noun or a modifier than a colour.
    """
    multi = [_words(n) for n in xkcd_colours() if len(_words(n)) > 1]
    singles = {"".join(_words(n)) for n in xkcd_colours()}
    heading = {SYNONYMS.get(w[-1], w[-1]) for w in multi} & singles
    return frozenset(set(BASIC) | set(SYNONYMS) | set(css4_colours()) | {"".join(w) for w in multi} | heading)


def _above(v: np.ndarray, t: float) -> np.ndarray:
    """A soft step up at ``t``, 2 units wide (logistic)."""
    return 1.0 / (1.0 + np.exp(-(v - t) / 2.0))


def neutral(lab: np.ndarray) -> np.ndarray:
    """How achromatic Lab colours are: 1 below chroma C* ~ 10, 0 above. ``lab [..., 3]`` -> ``[...]`` in [0, 1].

    In the XKCD survey the nearest name of a colour is white, grey or black for about 70% of colours below C* 8
    and 40% at C* 12-14, and almost never above C* 22: the step sits where the survey's names turn chromatic.
    """
    return 1.0 - _above(np.hypot(lab[..., 1], lab[..., 2]), 10.0)


def achromatic(lab: np.ndarray, word: str) -> np.ndarray:
    """Membership of Lab colours in ``white``, ``grey`` or ``black``, from lightness L* and chroma C*.

    Soft steps (logistic, 2 units wide): white is L* > 82 and C* < 10, black L* < 22 and C* < 16 (very dark colours
    lose chroma), grey between them with C* < 10. A pale tint (a pink or lavender sky, C* ~ 12-15) is not white.

    Shape:
        ``lab [..., 3]`` -> ``[...]`` in [0, 1].
    """
    L = lab[..., 0]
    if word == "white":
        return neutral(lab) * _above(L, 82.0)
    if word == "black":
        return (1.0 - _above(L, 22.0)) * (1.0 - _above(np.hypot(lab[..., 1], lab[..., 2]), 16.0))
    if word == "grey":
        return neutral(lab) * _above(L, 22.0) * (1.0 - _above(L, 82.0))
    raise QueryError(f"achromatic word must be one of {ACHROMATIC}, got {word!r}")


# Modifiers that shift a colour's lightness or chroma rather than name a sub-family: the family's membership times a
# soft step (8 units wide) at the family's median L* or C* over its survey names.
LIGHTNESS_MODIFIERS = {"dark": -1.0, "deep": -1.0, "light": 1.0, "pale": 1.0, "pastel": 1.0}
CHROMA_MODIFIERS = {"bright": 1.0, "vivid": 1.0, "neon": 1.0, "dull": -1.0, "muted": -1.0}


@lru_cache(maxsize=256)
def membership(modifiers: str, key: str) -> np.ndarray:
    """The membership table of one colour term (as :func:`colour_term` gives it).

    Args:
        modifiers: the words before the family word, joined (``"dark"`` for "dark green"); '' for none.
        key: the term's family word (``"blue"``, ``"teal"``, ``"crimson"``).

    Returns:
        [COLOUR_BINS] float32 in [0, 1], max 1, in :func:`colour_index` order (read-only).
    """
    key = SYNONYMS.get(key, key)
    lab = _bin_lab().astype(np.float64)
    shift = modifiers in LIGHTNESS_MODIFIERS or modifiers in CHROMA_MODIFIERS
    if key in ACHROMATIC and not modifiers:
        table = achromatic(lab, key)
    else:
        keys, families, name_lab = _names()
        fam = np.array(families)
        members = (fam == key) & (shift or np.char.startswith(np.array(keys), modifiers))
        if not members.any():  # a name with no family of its own ("crimson"): its own colours
            members = np.array(keys) == modifiers + key
        if not members.any():
            raise QueryError(f"unknown colour {modifiers + key!r}")
        table = _vote(lab, name_lab[members]) / _voters(key in BASIC)
        if key in BASIC:  # the basic chromatic words leave neutral colours to white, grey and black
            table = table * (1.0 - neutral(lab))
        if shift:  # "dark green": green, and darker than the survey's typical green
            chroma = np.hypot(lab[:, 1], lab[:, 2])
            if modifiers in LIGHTNESS_MODIFIERS:
                sign, value, typical = LIGHTNESS_MODIFIERS[modifiers], lab[:, 0], name_lab[members, 0]
            else:
                sign, value, typical = CHROMA_MODIFIERS[modifiers], chroma, np.hypot(*name_lab[members, 1:].T)
            table = table / (1.0 + np.exp(-sign * (value - np.median(typical)) / 4.0))
    table = (table / table.max()).astype(np.float32)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=2)
def _voters(basic: bool) -> np.ndarray:
    """The kernel vote of every voting name at each bin, [COLOUR_BINS]. For a basic term only names of a basic
    family vote: a name with none ("navy", "teal") is ambiguous, not a counter-example."""
    _, families, name_lab = _names()
    voters = np.isin(np.array(families), BASIC) if basic else np.ones(len(families), dtype=bool)
    return np.maximum(_vote(_bin_lab(), name_lab[voters]), 1e-12)


def _vote(lab: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Sum over ``refs [M, 3]`` of the naming kernel at each of ``lab [N, 3]`` -> [N] float64."""
    out = np.zeros(len(lab), dtype=np.float64)
    sq = (lab**2).sum(-1)[:, None]
    for start in range(0, len(refs), 128):  # [N, 128] float32 blocks: ~16 MB
        block = refs[start : start + 128]
        d2 = sq - 2.0 * lab @ block.T + (block**2).sum(-1)[None, :]
        out += np.exp(d2 * np.float32(-0.5 / SIGMA**2)).sum(-1)
    return out


def _hex_to_rgb(hex_code: str) -> np.ndarray:
    return np.array([int(hex_code[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64) / 255.0
