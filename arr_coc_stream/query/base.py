"""The query-head plug-in interface (DESIGN.md section 7).

A query head turns text into named graph inputs and supplies the graph's participatory scorer; the per-frame graph,
the engine, the backends and the exporter know heads only through this interface, so nothing outside
``arr_coc_stream/query/`` depends on which head runs. A head:

- encodes a query (:meth:`QueryHead.encode` -> :class:`EncodedQuery`, whose named arrays :meth:`QueryHead.stack`
  batches into the inputs :meth:`QueryHead.query_inputs` declares);
- may declare per-frame inputs and states of its own (:meth:`QueryHead.frame_inputs`, :meth:`QueryHead.states`)
  and companion graphs (:meth:`QueryHead.companions`: the clip head's dense keyframe graph), exported and run on
  the same backend as the per-frame graph;
- supplies the participatory scorer, an ``nn.Module`` inside the per-frame graph (:class:`QueryScorer`);
- supplies its keyframe policy: the engine asks it for the per-frame inputs before each frame
  (:meth:`QueryHead.before_frame`) and again after a cut (:meth:`QueryHead.after_cut`);
- records its constants in every model file and checks them on load (:meth:`QueryHead.metadata`,
  :meth:`QueryHead.check_metadata`).

Only :meth:`~QueryHead.encode`, :meth:`~QueryHead.query_inputs` and :meth:`~QueryHead.scorer` are required;
``tests/test_graph.py`` defines a third head in a dozen lines and runs it through torch and onnxruntime.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import QueryError
from ..spec import GraphSpec, StateSpec, TensorSpec

if TYPE_CHECKING:
    from ..config import EngineConfig

Runner = Callable[..., dict[str, Tensor]]  # a backend's runner: (named inputs, timings) -> named outputs


class QueryWarning(UserWarning):
    """Part of a query could not be used (those words are ignored), or none of it (relevance is query-free)."""


@dataclass(frozen=True, eq=False)
class EncodedQuery:
    """One stream's query as its head encoded it.

    Args:
        text: the query as given, ``None`` for query-free relevance.
        tensors: the head's query inputs for this stream, by input name, without the batch dimension (finite;
            stored as read-only float32 copies).
        terms: the words/phrases the head used, in query order, as written; the whole query for the clip head.
        ignored: words not used (not understood, or conflicting), stop-words excluded.

    ``q["query_weights"]`` reads a tensor. Compare two queries by their arrays; ``==`` is identity.
    """

    text: str | None
    tensors: Mapping[str, np.ndarray]
    terms: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        frozen = {}
        for name, value in dict(self.tensors).items():
            array = np.array(value, dtype=np.float32)  # a private copy
            if not np.all(np.isfinite(array)):
                raise QueryError(f"EncodedQuery.{name} must be finite")
            array.setflags(write=False)
            frozen[name] = array
        object.__setattr__(self, "tensors", frozen)
        object.__setattr__(self, "terms", tuple(self.terms))
        object.__setattr__(self, "ignored", tuple(self.ignored))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    @property
    def has_query(self) -> bool:
        """Whether any value is non-zero (otherwise relevance is query-free)."""
        return any(bool(np.any(v != 0)) for v in self.tensors.values())


@dataclass(frozen=True)
class Companion:
    """A graph a head runs beside the per-frame graph, exported to ``<model stem>_<name>.onnx`` next to it.

    Attributes:
        module: the torch module; its ``forward`` takes the spec's inputs in order and returns its outputs.
        spec: its inputs and outputs (no states).
    """

    module: nn.Module
    spec: GraphSpec


class QueryScorer(nn.Module):
    """The head's part of the per-frame graph: the participatory scorer and the head's states.

    ``inputs`` holds the head's graph inputs and each of its states under its ``<state>_in`` name.
    """

    def prepare(self, inputs: Mapping[str, Tensor], flow: Tensor) -> dict[str, Tensor]:
        """realizing.pre: what the head carries into this frame (the clip head warps its cached features).

        Args:
            inputs: the head's inputs and ``<state>_in`` tensors. flow: [B, 2, gh, gw] coarse flow in cells per
                frame, +x = content moved right (zero on a fresh state).
        """
        return {}

    def channels(self, prepared: Mapping[str, Tensor]) -> Tensor | None:
        """Channels clip_0..clip_15 [B, 16, gh, gw] in [-1, 1] for the texture and its clustering, or None."""
        return None

    @abstractmethod
    def forward(
        self, tex: Tensor, rgb: Tensor, inputs: Mapping[str, Tensor], prepared: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The match of every cell with the query.

        Args:
            tex: [B, C, gh, gw] texture (channels by name through :mod:`arr_coc_stream.channels`).
            rgb: [B, 3, H, W] the frame at the work resolution, in [0, 1] (H = gh * cell_px).

        Returns:
            match [B, gh, gw] in [0, 1]; query_on [B], 1.0 where the stream has a query, else 0.0.
        """

    def next_state(
        self, inputs: Mapping[str, Tensor], prepared: Mapping[str, Tensor], dt: Tensor, motion: Tensor
    ) -> dict[str, Tensor]:
        """The head's states after this frame, by state name.

        Args:
            dt: [B, 1] seconds since the previous frame. motion: [B, 1] the frame's mean motion channel.
        """
        return {}


class QueryHead(ABC):
    """A query encoder as a plug-in of the per-frame graph; register one with
    :func:`~arr_coc_stream.query.register_head`.

    Attributes:
        name: the ``EngineConfig.query_encoder`` value that selects the head.
        requires: the :class:`~arr_coc_stream.config.EngineConfig` fields the head needs set, with what they
            hold; no other head may be given them.
    """

    name: ClassVar[str]
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config

    @abstractmethod
    def encode(self, text: str | None) -> EncodedQuery:
        """Encode ``text``; ``None`` gives query-free relevance, an empty string raises :class:`QueryError`."""

    @abstractmethod
    def query_inputs(self) -> tuple[TensorSpec, ...]:
        """The graph inputs :meth:`encode` fills, once per query."""

    @abstractmethod
    def scorer(self) -> QueryScorer:
        """The head's module in the per-frame graph."""

    def frame_inputs(self) -> tuple[TensorSpec, ...]:
        """The graph inputs :meth:`before_frame` fills on every frame."""
        return ()

    def states(self) -> tuple[StateSpec, ...]:
        """The head's states, carried between frames after the core states."""
        return ()

    def companions(self) -> dict[str, Companion]:
        """Graphs run beside the per-frame graph, by name."""
        return {}

    def before_frame(
        self,
        frame: np.ndarray,
        state: Mapping[str, Tensor],
        *,
        reset: bool,
        first: bool,
        dt: float,
        companions: Mapping[str, Runner],
        timings: dict[str, float],
    ) -> tuple[dict[str, Tensor], str | None]:
        """The keyframe policy before the graph runs: the :meth:`frame_inputs` tensors for this frame.

        Args:
            frame: [H, W, 3] uint8 RGB as the engine received it. state: the state entering this frame (batch 1).
            reset: the state starts over at this frame. first: the engine's first frame. dt: seconds since the
                previous frame. companions: the opened companion runners. timings: milliseconds per stage.

        Returns:
            The inputs (batch 1) and why they were computed (a keyframe reason), or None when nothing was.
        """
        return {}, None

    def after_cut(
        self, frame: np.ndarray, keyframe: str | None, companions: Mapping[str, Runner], timings: dict[str, float]
    ) -> tuple[dict[str, Tensor] | None, str | None]:
        """The keyframe policy when the graph reports a cut: inputs to run the frame again with (its state
        inputs unchanged), or None to keep the result; and the keyframe reason to report."""
        return None, keyframe

    def stack(self, queries: Sequence[EncodedQuery]) -> dict[str, Tensor]:
        """Batch per-stream queries into the :meth:`query_inputs` tensors, ``[B, *shape]`` each."""
        queries = list(queries)
        if not queries:
            raise QueryError(f"{type(self).__name__}.stack needs at least one EncodedQuery, got none")
        out = {}
        for spec in self.query_inputs():
            rows = []
            for i, q in enumerate(queries):
                if not isinstance(q, EncodedQuery):
                    raise QueryError(f"query {i} is {type(q).__name__}, expected EncodedQuery")
                value = q.tensors.get(spec.name)
                if value is None or value.shape != spec.shape:
                    got = "nothing" if value is None else f"shape {value.shape}"
                    raise QueryError(
                        f"query {i} has {got} for {spec.name}, expected shape {spec.shape} for the {self.name!r} head"
                    )
                rows.append(value)
            out[spec.name] = torch.from_numpy(np.stack(rows)).to(spec.torch_dtype)
        return out

    def input_size(self) -> tuple[int, int] | None:
        """(H, W) the head would like frames at least as large as (it reads whole frames), or None."""
        return None

    def tag(self) -> str:
        """A short name for model files exported with this head ('' for none)."""
        return ""

    def metadata(self) -> dict[str, Any]:
        """The head's constants, recorded in every model file (JSON-ready)."""
        return {}

    def check_metadata(self, meta: Mapping[str, Any], source: str | os.PathLike[str]) -> None:  # noqa: B027 (optional)
        """Refuse a model file made with other constants (:class:`~arr_coc_stream.errors.ModelError`)."""

    def header(self) -> dict[str, Any]:
        """What the head adds to a JSONL header."""
        return {}


def check_text(query: object) -> bool:
    """Whether ``query`` has text to encode: a non-empty string. An empty one warns (:class:`QueryWarning`) and
    means query-free relevance; what is not a string raises :class:`QueryError`."""
    if not isinstance(query, str):
        raise QueryError(f"query must be a str or None, got {type(query).__name__}")
    if not query.strip():
        warnings.warn(
            QueryWarning(f"empty query {query!r}: relevance is query-free (pass None to say so)"), stacklevel=3
        )
        return False
    return True
