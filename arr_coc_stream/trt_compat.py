"""TensorRT compatibility check of an exported ONNX graph (DESIGN.md section 8).

TensorRT cannot run here, so the exported graph is checked against TensorRT's own ONNX operator support table,
kept as data in ``data/tensorrt_onnx_support.json`` with the TensorRT version and the source it was taken from:
operator names, tensor types, and the attribute limits that matter for this graph (Resize modes and
antialiasing, TopK sorted with a constant K <= 3840, GridSample on 4-D input, 2-D/3-D pooling, constant axes),
plus the project's own exclusions (NonZero, DFT, STFT). A user with a GPU confirms with
``polygraphy run models/<name>.onnx --trt --onnxrt``.

    >>> from arr_coc_stream.trt_compat import check_tensorrt_compat
    >>> report = check_tensorrt_compat("models/model.onnx")  # doctest: +SKIP
    >>> print(report.verdict())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import onnx
from onnx import TensorProto, helper, numpy_helper

SUPPORT_FILE = "tensorrt_onnx_support.json"
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class CompatIssue:
    """One reason TensorRT would refuse the graph, naming the node, operator and attribute."""

    node: str
    op: str
    attribute: str | None
    message: str

    def __str__(self) -> str:
        what = f"{self.op}.{self.attribute}" if self.attribute else self.op
        return f"node {self.node!r} ({what}): {self.message}"


@dataclass
class CompatReport:
    """Outcome of :func:`check_tensorrt_compat`."""

    tensorrt_version: str
    source: str
    issues: list[CompatIssue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    op_counts: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.issues

    def verdict(self) -> str:
        """A few lines for humans: the verdict, then each issue and warning."""
        nodes = sum(self.op_counts.values())
        head = (
            f"TensorRT compatibility (operator table of TensorRT {self.tensorrt_version}): "
            f"{'OK' if self.ok else 'FAILED'}, {nodes} nodes, {len(self.op_counts)} operator types"
        )
        lines = [head] + [f"  error: {i}" for i in self.issues] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tensorrt_version": self.tensorrt_version,
            "source": self.source,
            "issues": [str(i) for i in self.issues],
            "warnings": list(self.warnings),
        }


@lru_cache(maxsize=1)
def load_support() -> dict[str, Any]:
    """TensorRT's ONNX support table and limits, as shipped in the package data."""
    return json.loads((resources.files("arr_coc_stream") / "data" / SUPPORT_FILE).read_text())


def check_tensorrt_compat(model: onnx.ModelProto | str | os.PathLike[str]) -> CompatReport:
    """Check an ONNX model against TensorRT's operator support and attribute limits.

    Args:
        model: a loaded model or the path of a ``.onnx`` file.

    Returns:
        A :class:`CompatReport`; ``report.ok`` is False when any node would be refused.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    support = load_support()
    report = CompatReport(support["tensorrt_version"], support["source"])
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        report.warnings.append(f"shape inference failed ({exc}); tensor types and ranks were not checked")
    lo, hi = support["opset_range"]
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS and not lo <= imp.version <= hi:
            report.issues.append(
                CompatIssue("<model>", "opset", None, f"opset {imp.version} outside TensorRT's range {lo}..{hi}")
            )
    _check_graph(model.graph, support, report)
    return report


def _check_graph(graph: onnx.GraphProto, support: dict[str, Any], report: CompatReport) -> None:
    types = _tensor_types(graph)
    ranks = _tensor_ranks(graph)
    consts = _constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    _check_types(graph, types, consumers, support, report)
    ops = support["operators"]
    for node in graph.node:
        report.op_counts[node.op_type] += 1
        label = node.name or (node.output[0] if node.output else node.op_type)
        if node.domain not in _DEFAULT_DOMAINS:
            report.issues.append(
                CompatIssue(label, node.op_type, None, f"custom domain {node.domain!r} has no TensorRT importer")
            )
            continue
        if node.op_type in support["project_forbidden"]:
            report.issues.append(CompatIssue(label, node.op_type, None, support["project_forbidden"][node.op_type]))
            continue
        spec = ops.get(node.op_type)
        if spec is None or not spec["supported"]:
            report.issues.append(
                CompatIssue(label, node.op_type, None, f"not supported by TensorRT {support['tensorrt_version']}")
            )
            continue
        for issue in _check_limits(node, label, support["limits"], consts, ranks):
            report.issues.append(issue)
        for attr in node.attribute:  # If / Loop / Scan bodies
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                _check_graph(sub, support, report)


def _check_limits(
    node: onnx.NodeProto, label: str, limits: dict[str, Any], consts: dict[str, Any], ranks: dict[str, int]
) -> Iterator[CompatIssue]:
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    rule = limits.get(op, {})
    if op == "Resize":
        defaults = {
            "mode": "nearest",
            "coordinate_transformation_mode": "half_pixel",
            "nearest_mode": "round_prefer_floor",
            "keep_aspect_ratio_policy": "stretch",
            "antialias": 0,
        }
        for name, default in defaults.items():
            value = attrs.get(name, default)
            if value not in rule[name]:
                yield CompatIssue(label, op, name, f"{name}={value!r} is not supported (TensorRT takes {rule[name]})")
    elif op == "TopK":
        if attrs.get("sorted", 1) not in rule["sorted"]:
            yield CompatIssue(label, op, "sorted", f"sorted={attrs['sorted']} is not supported (TensorRT needs 1)")
        k = consts.get(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            yield CompatIssue(label, op, "K", "K must be a constant (initializer or Constant node)")
        elif int(k.reshape(-1)[0]) > rule["max_k"]:
            yield CompatIssue(label, op, "K", f"K={int(k.reshape(-1)[0])} exceeds TensorRT's limit {rule['max_k']}")
    elif op == "GridSample":
        rank = ranks.get(node.input[0])
        if rank is None:
            yield CompatIssue(label, op, "X", "input rank unknown; TensorRT needs a 4-D input")
        elif rank != rule["input_rank"]:
            yield CompatIssue(label, op, "X", f"{rank}-D input; TensorRT supports 4-D GridSample only")
    elif op in ("AveragePool", "MaxPool", "LpPool"):
        kernel = attrs.get("kernel_shape", [])
        if "spatial_dims" in rule and len(kernel) not in rule["spatial_dims"]:
            yield CompatIssue(label, op, "kernel_shape", f"{len(kernel)}-D pooling; TensorRT pools in 2-D or 3-D")
        if any(d != 1 for d in attrs.get("dilations", [])):
            yield CompatIssue(label, op, "dilations", f"dilations={attrs['dilations']}; TensorRT needs all ones")
        if op == "MaxPool" and len([o for o in node.output if o]) > 1:
            yield CompatIssue(label, op, "Indices", "the Indices output is not supported")
    elif op == "ScatterND" and attrs.get("reduction", "none") not in rule["reduction"]:
        yield CompatIssue(label, op, "reduction", f"reduction={attrs['reduction']!r} is not supported")
    elif op == "Constant":
        for name in rule.get("forbidden_attributes", []):
            if name in attrs:
                yield CompatIssue(label, op, name, f"attribute {name} is not supported")
    for i in limits["constant_inputs"].get(op, []):
        if len(node.input) > i and node.input[i] and node.input[i] not in consts:
            yield CompatIssue(label, op, node.input[i], f"input {i} must be a constant for TensorRT")


def _check_types(
    graph: onnx.GraphProto,
    types: dict[str, int],
    consumers: dict[str, list[onnx.NodeProto]],
    support: dict[str, Any],
    report: CompatReport,
) -> None:
    allowed = {getattr(TensorProto, t) for t in support["tensor_types"]}
    io_only = {getattr(TensorProto, t) for t in support["io_only_types"]}
    limited = {getattr(TensorProto, t) for t in support["limited_types"]}
    graph_io = {v.name for v in graph.input} | {v.name for v in graph.output}
    for name, elem in types.items():
        tname = TensorProto.DataType.Name(elem)
        if elem in limited:
            report.warnings.append(f"tensor {name!r} is {tname}: {support['limited_types'][tname]}")
        elif elem not in allowed:
            report.issues.append(CompatIssue(name, "tensor", "type", f"type {tname} is not supported by TensorRT"))
        elif elem in io_only:
            if name not in graph_io:
                report.issues.append(
                    CompatIssue(
                        name, "tensor", "type", f"{tname} tensor inside the network: {support['io_only_types'][tname]}"
                    )
                )
            for node in consumers.get(name, []):
                if node.op_type != "Cast":
                    report.issues.append(
                        CompatIssue(
                            node.name or node.op_type,
                            node.op_type,
                            "type",
                            f"reads {tname} input {name!r}; only a Cast may",
                        )
                    )


def _tensor_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {}
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for t in graph.initializer:
        types[t.name] = t.data_type
    return types


def _tensor_ranks(graph: onnx.GraphProto) -> dict[str, int]:
    ranks = {}
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    for t in graph.initializer:
        ranks[t.name] = len(t.dims)
    return ranks


def _constants(graph: onnx.GraphProto) -> dict[str, Any]:
    """Values of initializers and Constant-node outputs (tensor-valued only)."""
    consts: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                    import numpy as np

                    consts[node.output[0]] = np.asarray(helper.get_attribute_value(a))
    return consts
