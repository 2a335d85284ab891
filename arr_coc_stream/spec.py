"""The graph contract: one :class:`GraphSpec` names every input, state and output of a graph (DESIGN.md section 8).

The torch module, the engine, every backend and the exporter iterate over the spec instead of writing names out by
position: ONNX input and output names come from it, the engine builds the initial state from it and carries each
``<state>_out`` back into ``<state>_in`` by name, and it travels in every model file's metadata
(:mod:`arr_coc_stream.model_file`), so a runtime knows what a file takes without guessing.

Shapes are per stream: the leading batch dimension (streams per call, the only dynamic one) is left out. A graph's
inputs come first (``frame``, ``dt``, ``reset``, then the query head's), then one ``<state>_in`` per state; its
outputs are the results, then one ``<state>_out`` per state, with the same shape and dtype as the input.

Every tensor has at least one dimension after the batch: a per-stream scalar is shape ``(1,)``, [B, 1] in the
graph. Triton's sequence batcher needs it: its control input (``reset``) must be [B, 1], and an implicit state
cannot be declared without dims.

    >>> spec = GraphSpec(inputs=(TensorSpec("x", (3,), "float32"),), states=(StateSpec("s", (1,), "float32"),),
    ...                  outputs=(TensorSpec("y", (3,), "float32"),))
    >>> spec.input_names, spec.output_names
    (('x', 's_in'), ('y', 's_out'))
    >>> spec.initial_state(batch=2)["s"].shape
    torch.Size([2, 1])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ModelError

DTYPES = ("float32", "float16", "uint8", "bool", "int32", "int64")  # numpy names: the same in torch, ONNX, JSON


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a graph.

    Attributes:
        name: the tensor's name (an ONNX input or output name).
        shape: per-stream shape, without the leading batch dimension; at least one dimension.
        dtype: numpy name of the element type (one of :data:`DTYPES`).
        doc: what it holds, with its value range.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    doc: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if not self.shape:
            raise ModelError(f"tensor {self.name!r} has no dimension after the batch: a per-stream scalar is (1,)")
        if self.dtype not in DTYPES:
            raise ModelError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {DTYPES}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def zeros(self, batch: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """A [batch, *shape] tensor of zeros (False for bool)."""
        return torch.zeros((batch, *self.shape), dtype=self.torch_dtype, device=device)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc}


@dataclass(frozen=True)
class StateSpec(TensorSpec):
    """A state tensor: fed to the graph as ``<name>_in``, returned as ``<name>_out``, carried between frames.

    Attributes:
        initial: the value every element takes in a fresh state (before the first frame; a frame with
            ``reset`` set starts from fresh state inside the graph whatever its ``_in`` holds).
    """

    initial: float = 0.0

    @property
    def in_name(self) -> str:
        return f"{self.name}_in"

    @property
    def out_name(self) -> str:
        return f"{self.name}_out"

    def fresh(self, batch: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """A [batch, *shape] tensor of the initial value."""
        return torch.full((batch, *self.shape), self.initial, dtype=self.torch_dtype, device=device)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "initial": self.initial}


@dataclass(frozen=True)
class GraphSpec:
    """Every input, state and output of one graph, in call order.

    Attributes:
        inputs: the graph's inputs other than states.
        states: the states (each one ``<name>_in`` input and one ``<name>_out`` output).
        outputs: the results, other than states.
    """

    inputs: tuple[TensorSpec, ...]
    states: tuple[StateSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def __post_init__(self) -> None:
        names = [t.name for t in self.inputs] + [t.name for t in self.outputs]
        names += [n for s in self.states for n in (s.in_name, s.out_name)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ModelError(f"a graph spec names {repeated} more than once")

    @property
    def input_names(self) -> tuple[str, ...]:
        """ONNX input names, in call order: the inputs, then each ``<state>_in``."""
        return tuple(t.name for t in self.inputs) + tuple(s.in_name for s in self.states)

    @property
    def output_names(self) -> tuple[str, ...]:
        """ONNX output names, in order: the results, then each ``<state>_out``."""
        return tuple(t.name for t in self.outputs) + tuple(s.out_name for s in self.states)

    def input_specs(self) -> tuple[TensorSpec, ...]:
        """The spec of every input in call order (a state appears under its ``_in`` name)."""
        return self.inputs + tuple(TensorSpec(s.in_name, s.shape, s.dtype, s.doc) for s in self.states)

    def output_specs(self) -> tuple[TensorSpec, ...]:
        """The spec of every output in order (a state appears under its ``_out`` name)."""
        return self.outputs + tuple(TensorSpec(s.out_name, s.shape, s.dtype, s.doc) for s in self.states)

    def initial_state(self, batch: int = 1, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """A fresh state for ``batch`` streams, by state name."""
        return {s.name: s.fresh(batch, device) for s in self.states}

    def ordered(self, named: Mapping[str, torch.Tensor], source: str = "the graph") -> tuple[torch.Tensor, ...]:
        """``named`` inputs (states under their ``_in`` names) in call order.

        Raises:
            ModelError: an input is missing, naming it and ``source``.
        """
        missing = [n for n in self.input_names if n not in named]
        if missing:
            raise ModelError(f"{source} needs the inputs {missing}, which were not given")
        return tuple(named[n] for n in self.input_names)

    def named(self, outputs: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
        """Outputs in order -> a dict by output name."""
        if len(outputs) != len(self.output_names):
            raise ModelError(f"a graph returned {len(outputs)} outputs, its spec names {len(self.output_names)}")
        return dict(zip(self.output_names, outputs))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in model-file metadata."""
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "states": [s.to_dict() for s in self.states],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GraphSpec:
        try:
            return cls(
                inputs=tuple(TensorSpec(**t) for t in d["inputs"]),
                states=tuple(StateSpec(**s) for s in d["states"]),
                outputs=tuple(TensorSpec(**t) for t in d["outputs"]),
            )
        except (KeyError, TypeError) as exc:
            raise ModelError(f"not a graph spec: {exc}") from exc

    def differences(self, other: GraphSpec) -> list[str]:
        """What differs from ``other`` (names, shapes, dtypes, initial values); empty when they are the same."""
        mine = {t.name: t for t in (*self.input_specs(), *self.output_specs())}
        theirs = {t.name: t for t in (*other.input_specs(), *other.output_specs())}
        diffs = [f"{n}: only in the first" for n in mine if n not in theirs]
        diffs += [f"{n}: only in the second" for n in theirs if n not in mine]
        for n in mine.keys() & theirs.keys():
            a, b = mine[n], theirs[n]
            if (a.shape, a.dtype) != (b.shape, b.dtype):
                diffs.append(f"{n}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        inits = {s.name: s.initial for s in other.states}
        diffs += [
            f"{s.name}: initial {s.initial} vs {inits[s.name]}"
            for s in self.states
            if s.name in inits and inits[s.name] != s.initial
        ]
        if not diffs and (self.input_names, self.output_names) != (other.input_names, other.output_names):
            diffs.append("the same tensors in another order")
        return sorted(diffs)
