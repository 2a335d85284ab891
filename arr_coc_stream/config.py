"""Engine configuration: one frozen dataclass, validated once, serialised into every artifact.

Defaults live here and only here (DESIGN.md section 14). ``run(**options)`` and the CLI resolve onto it through
:meth:`EngineConfig.from_options`; the CLI derives its options from the fields and the ``Attributes`` docs below
(:func:`field_docs`). Every field but :data:`RUNTIME_FIELDS` shapes the exported graph, so a model file carries
them and a runtime refuses an option that contradicts them (:mod:`arr_coc_stream.model_file`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from . import query
from .errors import ConfigError

INPUT_MODES = ("work", "full")
# Fields that do not change an exported graph: a model file serves any value of them. The CLIP model's path
# differs between machines: its graphs are checked against the loaded model's constants instead.
RUNTIME_FIELDS = (
    "device",
    "threads",
    "compile",
    "gap_limit_s",
    "clip_model",
    "clip_interval_s",
    "clip_motion_threshold",
)


@dataclass(frozen=True)
class EngineConfig:
    """Everything that shapes the per-frame graph and the engine around it.

    Attributes:
        grid: cells (rows, columns) of the relevance map.
        cell_px: work-resolution pixels per cell side; the work resolution is ``grid * cell_px``.
        k: maximum number of selected cells (a maximum, not a quota: see ``relevance_floor``).
        relevance_floor: a top-K cell is selected (``valid``) only if its relevance is at least this, in [0, 1].
        explore_share: share of ``k`` picked with inhibition of return from the fixation history, in [0, 1).
        max_total_budget: cap on the sum of foveal token budgets per frame (>= 64).
        crop_cells: side of a foveal crop window in cells.
        max_foveal: candidates examined for a foveal budget, in score order.
        kappa: exponent of the budget curve ``64 + 336 * s ** kappa``.
        gap_limit_s: a time step longer than this resets the temporal state.
        tau_relevance_s: time constant of the relevance cache (decay ``exp(-dt / tau)``).
        tau_fixation_s: time constant of the fixation history.
        motion_boost: share of its headroom (1 - cached relevance) a fully moving cell gains in the output
            relevance (never cached).
        min_scene_len_s: no cut is reported within this many seconds of the previous reset or cut, so a
            transition of a few frames is reported once; 0.15 s still reports a cut 0.2 s after another (fast
            editing). Flashes are told apart by the detector itself (:func:`arr_coc_stream.realizing.detect_cut`),
            not by this.
        cut_threshold: scene score above which a frame is a cut, in (0, 1). At 0.5 a cut needs a change of about
            0.8 units (``realizing.CUT_CHANGE``) and 2.3 times the shot's running mean (``CUT_RATIO``); lower is
            more sensitive. Cut F1 stays >= 0.95 on the evaluation clips from 0.45 to 0.55.
        flow_radius: block-matching search radius in flow-resolution pixels (flow resolution = work / 4).
        clusters: k-means clusters on the grid (cluster channels, diversification).
        input_mode: ``"work"``: frames arrive resized to the work resolution (decoder or CPU area resize);
            ``"full"``: frames arrive at ``frame_size`` and the graph does the area downscale.
        frame_size: (H, W) of full frames; required with ``input_mode="full"``.
        query_encoder: the query head: ``"attributes"`` (offline default: colour, text, motion and position
            words) or ``"clip"`` (open queries through a CLIP model), or a head added with
            :func:`arr_coc_stream.query.register_head`.
        clip_model: the clip head's CLIP model: a local folder written by ``save_pretrained`` or a hub id.
        clip_size: short side in pixels of the clip head's dense keyframe input (rounded to the model's patch size).
        clip_interval_s: the clip head computes a dense keyframe at least this often (besides the first frame and
            every cut).
        clip_motion_threshold: the clip head computes a keyframe when the motion accumulated since the last one
            (sum of the frames' mean motion channel, in [0, 1] each) reaches this; None disables it.
        device: torch device string for the torch backend.
        threads: intra-op threads of the engine's graph calls (torch and onnxruntime); None leaves each library's
            default (torch: one per core, onnxruntime: one per physical core). One thread is the default: on these
            2-core machines it was never slower, and with two busy processes beside it torch's default fell
            10-40x (the README's speed table). torch's count is set around the engine's own calls and restored,
            so the caller's ``torch.get_num_threads()`` is unchanged.
        compile: run the torch backend's graph through ``torch.compile`` (inductor): about 2x faster per frame,
            the same selections; the first frame compiles (minutes on 2 cores, cached on disk for the next
            process). Per-stage timings are then one ``graph (compiled)`` entry.
        params: opponent-processing constants (see :data:`DEFAULT_PARAMS`).
    """

    grid: tuple[int, int] = (32, 32)
    cell_px: int = 8
    k: int = 200
    relevance_floor: float = 0.3
    explore_share: float = 0.25
    max_total_budget: int = 1024
    crop_cells: int = 4
    # A selected cell scores >= relevance_floor (0.3), so its budget is >= 121 tokens: at most 8 fit under
    # 1024. Ten candidates leave room for two suppressed by overlap; each costs a step of the greedy loop.
    max_foveal: int = 10
    kappa: float = 1.5
    gap_limit_s: float = 0.5
    tau_relevance_s: float = 0.1
    tau_fixation_s: float = 1.0
    motion_boost: float = 0.3
    min_scene_len_s: float = 0.15  # was 0.5, which swallowed a cut 0.2-0.4 s after another (issue 17)
    cut_threshold: float = 0.5
    flow_radius: int = 4
    clusters: int = 6
    input_mode: str = "work"
    frame_size: tuple[int, int] | None = None
    query_encoder: str = "attributes"
    clip_model: str | None = None
    clip_size: int = 448
    clip_interval_s: float = 1.0
    # A frame's mean motion measured on bikes.mp4 (fast pans): median 0.09, 90th percentile 0.34; on
    # bigbuckbunny.mp4: median 0.03. At 3.0 a fast pan refreshes about every 9 frames, a typical shot waits for
    # the 1 s interval; the warp already follows translation, so only heavy change should pay a keyframe.
    clip_motion_threshold: float | None = 3.0
    device: str = "cpu"
    threads: int | None = 1
    compile: bool = False
    params: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PARAMS))

    def __post_init__(self) -> None:
        _check_types(self)  # before the conversions below: grid="32" must be a ConfigError, not a raw TypeError
        object.__setattr__(self, "grid", tuple(int(v) for v in self.grid))
        if isinstance(self.clip_model, os.PathLike):
            object.__setattr__(self, "clip_model", os.fspath(self.clip_model))
        if self.frame_size is not None:
            object.__setattr__(self, "frame_size", tuple(int(v) for v in self.frame_size))
        object.__setattr__(self, "params", {**DEFAULT_PARAMS, **self.params})
        self._validate()

    @property
    def work_size(self) -> tuple[int, int]:
        """Work resolution (H, W) in pixels."""
        return self.grid[0] * self.cell_px, self.grid[1] * self.cell_px

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the graph's frame input: the work size, or ``frame_size`` in ``full`` input mode."""
        return self.frame_size if self.input_mode == "full" else self.work_size  # type: ignore[return-value]

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def explore_k(self) -> int:
        """Slots of ``k`` that go to cells picked with inhibition of return."""
        return int(round(self.k * self.explore_share))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> dict[str, Any]:
        """Every field as JSON reads it back (tuples as lists), so it compares equal to a model file's record."""
        return json.loads(json.dumps(self.to_dict()))

    def graph_fields(self) -> dict[str, Any]:
        """The fields that shape the exported graph (every field but :data:`RUNTIME_FIELDS`), JSON-ready."""
        return {k: v for k, v in self.to_json().items() if k not in RUNTIME_FIELDS}

    @classmethod
    def from_options(cls, **options: Any) -> EngineConfig:
        """Build a config from keyword options, naming any unknown option.

        Without ``query_encoder``, options that only one query head uses choose that head (``clip_model=...``
        alone means ``query_encoder="clip"``).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; valid options: {sorted(names)}")
        if "query_encoder" not in options:
            wanted = {h.name for h in query.HEADS.values() if any(options.get(f) is not None for f in h.requires)}
            if len(wanted) == 1:
                options = {**options, "query_encoder": wanted.pop()}
        return cls(**options)

    def _validate(self) -> None:
        gh, gw = self.grid
        _check(len(self.grid) == 2 and gh >= 4 and gw >= 4, f"grid must be (rows, cols) >= 4, got {self.grid}")
        _check(
            self.cell_px >= 4 and self.cell_px % 4 == 0, f"cell_px must be a multiple of 4, >= 4, got {self.cell_px}"
        )
        # the cut detector pools the flow's quarter-resolution luminance into an 8x8 layout (realizing.py)
        _check(
            all(side % WORK_MULTIPLE == 0 for side in self.work_size),
            f"grid x cell_px (the work size) must be a multiple of {WORK_MULTIPLE} px on both sides, got grid "
            f"{self.grid} x {self.cell_px} px = {self.work_size}",
        )
        _check(
            1 <= self.k <= min(self.cells, 3840),
            f"k must be in [1, min(cells={self.cells}, 3840)], got {self.k} for grid {self.grid}",
        )
        _check(0.0 <= self.relevance_floor <= 1.0, f"relevance_floor must be in [0, 1], got {self.relevance_floor}")
        _check(0.0 <= self.explore_share < 1.0, f"explore_share must be in [0, 1), got {self.explore_share}")
        _check(self.max_total_budget >= 64, f"max_total_budget must be >= 64, got {self.max_total_budget}")
        _check(
            1 <= self.crop_cells <= min(self.grid),
            f"crop_cells must be in [1, {min(self.grid)}], got {self.crop_cells}",
        )
        _check(1 <= self.max_foveal <= self.k, f"max_foveal must be in [1, k={self.k}], got {self.max_foveal}")
        _check(self.kappa > 0, f"kappa must be > 0, got {self.kappa}")
        for name in ("gap_limit_s", "tau_relevance_s", "tau_fixation_s"):
            _check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        _check(self.motion_boost >= 0, f"motion_boost must be >= 0, got {self.motion_boost}")
        _check(self.min_scene_len_s >= 0, f"min_scene_len_s must be >= 0, got {self.min_scene_len_s}")
        _check(0.0 < self.cut_threshold < 1.0, f"cut_threshold must be in (0, 1), got {self.cut_threshold}")
        _check(1 <= self.flow_radius <= 8, f"flow_radius must be in [1, 8], got {self.flow_radius}")
        _check(2 <= self.clusters <= 16, f"clusters must be in [2, 16], got {self.clusters}")
        _check(self.input_mode in INPUT_MODES, f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        if self.input_mode == "full":
            _check(
                self.frame_size is not None and min(self.frame_size) >= min(self.work_size),
                f"input_mode='full' needs frame_size (H, W) at least the work size {self.work_size}, "
                f"got {self.frame_size}",
            )
        _check(
            isinstance(self.query_encoder, str) and self.query_encoder in query.HEADS,
            f"unsupported query_encoder {self.query_encoder!r}; available: {sorted(query.HEADS)}",
        )
        head = query.HEADS[self.query_encoder]
        for name, what in head.requires.items():
            value = getattr(self, name)
            _check(value not in (None, ""), f"query_encoder={head.name!r} needs {name}: {what}")
        for other in query.HEADS.values():
            for name in set(other.requires) - set(head.requires):
                _check(
                    getattr(self, name) is None,
                    f"{name} is used only with query_encoder={other.name!r}, got "
                    f"query_encoder={self.query_encoder!r} and {name}="
                    f"{getattr(self, name)!r}",
                )
        _check(
            self.threads is None or 1 <= self.threads <= 256, f"threads must be in [1, 256] or None, got {self.threads}"
        )
        _check(64 <= self.clip_size <= 1024, f"clip_size must be in [64, 1024], got {self.clip_size}")
        _check(self.clip_interval_s > 0, f"clip_interval_s must be > 0, got {self.clip_interval_s}")
        _check(
            self.clip_motion_threshold is None or self.clip_motion_threshold > 0,
            f"clip_motion_threshold must be > 0 or None, got {self.clip_motion_threshold}",
        )
        unknown = sorted(set(self.params) - set(DEFAULT_PARAMS))
        _check(not unknown, f"unknown params {unknown}; valid: {sorted(DEFAULT_PARAMS)}")
        for name, (lo, hi) in PARAM_RANGES.items():
            v = self.params[name]
            _check(lo <= v <= hi and math.isfinite(v), f"params[{name!r}] must be in [{lo}, {hi}], got {v}")


# Opponent-processing constants (DESIGN.md section 5). Kept as frozen nn.Parameters in the graph so a later
# fitting step can learn them; each has a validated range.
WORK_MULTIPLE = 32  # realizing.FLOW_DOWNSCALE (4) x realizing.CUT_POOL (8)
DEFAULT_PARAMS: dict[str, float] = {
    "query_share": 0.9,  # share of a matched cell's headroom (1 - relevance) the query lifts it by
    "query_gate": 0.1,  # a cell's query match below this is no match: it gets no lift
    "query_presence": 0.25,  # a frame whose best gated match reaches this holds the query fully
    "query_damp": 0.85,  # how far the unmatched rest is tempered towards the floor while the query is present
    "particularize": 0.5,  # propositional (detail) vs. perspectival (salience) in the query-free base
    "diversify": 0.1,  # bonus for the best cell of each cluster (focus vs. diversify)
    "inhibition": 0.8,  # inhibition of return applied to the explore slots
    "saliency_memory": 0.5,  # weight of the warped previous saliency (stabilises saliency)
    "foveal_falloff": 0.5,  # perspectival attenuation at eccentricity 1
    "nms_iou": 0.25,  # foveal windows overlapping more than this are suppressed
}
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "query_share": (0.0, 1.0),
    "query_gate": (0.0, 0.95),
    "query_damp": (0.0, 1.0),
    "query_presence": (0.01, 1.0),
    "particularize": (0.0, 1.0),
    "diversify": (0.0, 0.5),
    "inhibition": (0.0, 1.0),
    "saliency_memory": (0.0, 0.95),
    "foveal_falloff": (0.0, 1.0),
    "nms_iou": (0.0, 1.0),
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_types(config: EngineConfig) -> None:
    """Raise :class:`ConfigError` naming the first field whose value is not of its annotated type.

    ints must be ints (not bools, not ``"200"``), floats finite real numbers (NaN or inf would reach the state),
    pairs two ints, ``params`` names to finite numbers; a ``str`` field also takes an ``os.PathLike`` (a path).
    NumPy scalars become Python numbers, so the configuration stays JSON-ready.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _is_a(value, hints[f.name]):
            raise ConfigError(f"{f.name} must be {_type_name(hints[f.name])}, got {value!r} ({type(value).__name__})")
        if isinstance(value, numbers.Integral) and not isinstance(value, int):
            object.__setattr__(config, f.name, int(value))
        elif isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
            object.__setattr__(config, f.name, float(value))


def _is_a(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, (str, os.PathLike))
    if origin is tuple:
        return isinstance(value, (tuple, list)) and len(value) == len(args) and all(map(_is_a, value, args))
    if origin is dict:
        return isinstance(value, dict) and all(_is_a(k, args[0]) and _is_a(v, args[1]) for k, v in value.items())
    return True  # a hint with no check here (Literal...): the range checks of _validate judge the value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    names = {int: "an int", float: "a finite number", bool: "a bool", str: "a string", type(None): "None"}
    return names.get(hint, str(hint).replace("typing.", ""))


def field_docs() -> dict[str, str]:
    """Each field's description from the ``Attributes`` section of :class:`EngineConfig`'s docstring (one line)."""
    docs: dict[str, str] = {}
    lines = (EngineConfig.__doc__ or "").split("Attributes:", 1)[-1].splitlines()
    name = None
    for line in lines:
        m = re.match(r"^ {8}(\w+): (.*)$", line)
        if m:
            name, docs[m.group(1)] = m.group(1), m.group(2).strip()
        elif name and line.startswith(" " * 12):
            docs[name] += " " + line.strip()
        elif line.strip():
            name = None
    return docs
