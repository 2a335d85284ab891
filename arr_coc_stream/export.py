"""Export the per-frame graph to ONNX, with its metadata (DESIGN.md section 8).

One file per configuration: opset 18, weights inside (``external_data=False``), the batch the only dynamic
dimension (1..``batch_max``), inputs and outputs named by the graph's :class:`~arr_coc_stream.spec.GraphSpec`
(the inputs, every ``<state>_in``; the results, every ``<state>_out``). The exporter is ``torch.export`` +
``torch.onnx`` (the "dynamo" exporter, torch's default since 2.9): the TorchScript exporter is deprecated and
cannot keep the batch dynamic through this graph's shape arithmetic. Export is deterministic: node metadata (stack
traces with file paths and line numbers) is stripped and the proto serialised deterministically, so the same
config gives the same bytes.

The metadata is the model-file contract of :mod:`arr_coc_stream.model_file` (configuration, graph spec, query
head, input mode, frame size, version) plus how the file was made (opset, parameter values, library versions,
the TensorRT check), in the ONNX ``metadata_props`` (one JSON value per key) and in ``<name>.json`` beside the file.

``fp16=True`` also writes ``<name>_fp16.onnx``: a float16 conversion that keeps FP32 inputs and outputs and
keeps in FP32 the nodes listed in its metadata (``fp32_nodes``), for TensorRT's strongly typed builds.

A query head's companion graphs are exported beside the per-frame graph as ``<name>_<companion>.onnx``: the clip
head's dense keyframe graph, ``<name>_clip.onnx`` (``image [B, H, W, 3] uint8 -> clip_feat [B, D, gh, gw]``).

    >>> import arr_coc_stream
    >>> exported = arr_coc_stream.export_onnx(arr_coc_stream.EngineConfig(), "models/default.onnx")  # doctest: +SKIP
    >>> print(exported.tensorrt.verdict())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._version import __version__
from .config import EngineConfig
from .errors import ConfigError, ModelError
from .graph import FrameGraph, example_inputs
from .model_file import companion_path, make_metadata
from .query import QueryHead, build_head
from .spec import GraphSpec

if TYPE_CHECKING:
    import onnx

    from .trt_compat import CompatReport

OPSET = 18
# Operator types kept in FP32 in the float16 variant. None: measured on bikes.mp4 (120 frames, FP32 state fed to
# both), keeping the grid-level decisions (TopK, GridSample, Softmax, ArgMin, ReduceL2) in FP32 moved the selection
# overlap with FP32 by < 0.001 (0.9896 vs 0.9898): the difference comes from the pixel-level filters, which are
# the point of running in float16. onnxruntime's CPU provider has float16 kernels for every operator here.
FP16_KEEP_OPS: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportConfig:
    """How a graph is exported (the engine configuration says what the graph computes).

    Attributes:
        batch_max: largest batch (streams per call) the file is built for; the batch is dynamic in 1..batch_max.
        fp16: also write ``<name>_fp16.onnx``, a float16 conversion keeping FP32 inputs and outputs.
    """

    batch_max: int = 1
    fp16: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.batch_max <= 256:
            raise ConfigError(f"batch_max must be in [1, 256], got {self.batch_max}")


@dataclass
class ExportedFile:
    """One ONNX file :func:`export_onnx` wrote, with its metadata and TensorRT compatibility report."""

    path: Path
    metadata: dict[str, Any]
    tensorrt: CompatReport
    fp16_path: Path | None = None

    @property
    def metadata_path(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def fp16_metadata_path(self) -> Path | None:
        return None if self.fp16_path is None else self.fp16_path.with_suffix(".json")

    @property
    def spec(self) -> GraphSpec:
        return GraphSpec.from_dict(self.metadata["graph"])


@dataclass
class ExportedModel(ExportedFile):
    """What :func:`export_onnx` wrote: the per-frame graph and the query head's companion graphs by name."""

    companions: dict[str, ExportedFile] = field(default_factory=dict)


def default_name(config: EngineConfig, export: ExportConfig | None = None, head: QueryHead | None = None) -> str:
    """File stem naming the shapes a model is built for, e.g. ``frame_graph_256x256_g32x32_c8_k200_b1``; a head
    with a tag appends it (the clip head: its model's folder name, ``..._b1_clip-vit-base-patch16``)."""
    export = export or ExportConfig()
    h, w = config.frame_shape
    gh, gw = config.grid
    name = f"frame_graph_{h}x{w}_g{gh}x{gw}_c{config.cell_px}_k{config.k}_b{export.batch_max}"
    tag = head.tag() if head is not None else ""
    return f"{name}_{tag}" if tag else name


def export_onnx(
    config: EngineConfig | None,
    path: str | os.PathLike[str],
    export: ExportConfig | None = None,
    *,
    head: QueryHead | None = None,
    **options: Any,
) -> ExportedModel:
    """Export the per-frame graph of ``config`` to ``path`` (``.onnx``) with ``<name>.json`` beside it, and the
    query head's companion graphs to ``<name>_<companion>.onnx``.

    Args:
        config: the engine configuration (defaults when None).
        path: the ``.onnx`` file to write; its folder is created.
        export: export options; keyword ``options`` (``batch_max``, ``fp16``) override its fields.
        head: the query head, already built (default: built from ``config``; the clip head loads its model).

    Returns:
        An :class:`ExportedModel` with the paths written, the metadata and the TensorRT compatibility reports.
    """
    import onnx

    config = config or EngineConfig()
    export = dataclasses.replace(export or ExportConfig(), **options)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"the model path must end in .onnx, got {path}")
    head = head or build_head(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = FrameGraph(config, head).eval()
    model = trace_onnx(graph, graph.spec, export.batch_max)
    metadata = _metadata(config, head, graph.spec, export, graph)
    result = ExportedModel(path, metadata, _write_checked(model, path, metadata))
    if export.fp16:
        result.fp16_path = path.with_name(f"{path.stem}_fp16.onnx")
        _write_fp16(model, result.fp16_path, metadata)
    for name, companion in head.companions().items():
        dense = trace_onnx(companion.module.eval(), companion.spec, export.batch_max)
        meta = _metadata(config, head, companion.spec, export, None, companion=name)
        out = companion_path(path, name)
        file = ExportedFile(out, meta, _write_checked(dense, out, meta))
        if result.fp16_path is not None:
            file.fp16_path = companion_path(result.fp16_path, name)
            _write_fp16(dense, file.fp16_path, meta)
        onnx.checker.check_model(os.fspath(file.path), full_check=True)
        result.companions[name] = file
    onnx.checker.check_model(os.fspath(path), full_check=True)
    return result


def _write_checked(model: onnx.ModelProto, path: Path, metadata: dict[str, Any]) -> CompatReport:
    """Check ``model`` against TensorRT's ONNX support, record the verdict in ``metadata`` and write it."""
    from .trt_compat import check_tensorrt_compat

    report = check_tensorrt_compat(model)
    metadata["tensorrt_check"] = report.to_dict()
    write_model(model, path, metadata)
    return report


def _write_fp16(model: onnx.ModelProto, path: Path, metadata: dict[str, Any]) -> None:
    """Write the float16 variant of ``model`` (FP32 inputs and outputs) with its own metadata."""
    from .trt_compat import check_tensorrt_compat

    half, kept = convert_fp16(model)
    meta16 = {**metadata, "precision": "fp16", "fp32_nodes": kept, "fp32_ops": sorted(FP16_KEEP_OPS)}
    meta16["tensorrt_check"] = check_tensorrt_compat(half).to_dict()
    write_model(half, path, meta16)


def trace_onnx(module: torch.nn.Module, spec: GraphSpec, batch_max: int) -> onnx.ModelProto:
    """Trace ``module`` (which takes ``spec``'s inputs in order) with ``torch.export`` and translate it to a clean,
    deterministic ONNX model whose inputs and outputs carry the spec's names."""
    # batch 2 for the example: torch.export specialises a dimension of size 1
    example = spec.ordered(example_inputs(spec, 2))
    return _to_onnx(module, example, list(spec.input_names), list(spec.output_names), batch_max)


def _to_onnx(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], names: list[str], outputs: list[str], batch_max: int
) -> onnx.ModelProto:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"exporting to ONNX needs the 'onnx' extra ({exc.name} is missing): pip install 'arr_coc_stream[onnx]'"
        ) from exc
    batch = torch.export.Dim("batch", min=1, max=max(batch_max, 2))
    with torch.no_grad(), _quiet():
        # the dynamic shapes mirror forward's signature: FrameGraph.forward takes *inputs, a companion one input
        dims = tuple({0: batch} for _ in names)
        program = torch.onnx.export(
            module,
            example,
            None,
            dynamo=True,
            opset_version=OPSET,
            input_names=names,
            output_names=outputs,
            dynamic_shapes=(dims,) if _varargs(module) else dims,
            external_data=False,
            optimize=False,
            verbose=False,
        )
        assert program is not None  # dynamo=True returns the program (None is the old exporter's)
        _optimize(program.model)
    model = program.model_proto
    _strip(model)
    _shapes_after_cast(model.graph)
    return model


def _shapes_after_cast(graph: onnx.GraphProto) -> None:
    """Make Shape nodes that read a uint8 graph input read its Cast instead (the same shape).

    TensorRT takes a uint8 input only into a Cast. The exporter reads the dynamic batch size from the first input
    that has it, which for the dense-CLIP graph (one input) is the uint8 image.
    """
    import onnx

    uint8 = {v.name for v in graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    casts = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] in uint8}
    moved = False
    for node in graph.node:
        if node.op_type == "Shape" and node.input[0] in casts:
            node.input[0] = casts[node.input[0]]
            moved = True
    if moved:
        _topological_sort(graph)


def _optimize(model: Any) -> None:
    """Constant folding, dead-node removal and common-subexpression elimination on the ONNX IR.

    The exporter's own ``optimize=True`` adds onnxscript's pattern rewriter, which takes about a third of the
    export time here and removes only ~2% more nodes (841 vs 857) that onnxruntime and TensorRT fold anyway.
    """
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer as opt

    opt.inline(model)
    for _ in range(2):
        opt.fold_constants(model)
        opt.remove_unused_nodes(model)
    for p in (
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.RemoveUnusedNodesPass(),
        passes.NameFixPass(),
    ):
        p(model)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints, warnings and "torchvision is not installed" log lines for one
    call, restoring every filter and level afterwards (the library changes no global state)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _varargs(module: torch.nn.Module) -> bool:
    """Whether ``module.forward`` takes its inputs as ``*inputs``."""
    import inspect

    return any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())


def _strip(model: onnx.ModelProto) -> None:
    """Remove what varies between checkouts and machines (stack traces, paths) from the proto."""
    model.producer_name, model.producer_version = "arr_coc_stream", __version__
    model.doc_string = ""
    del model.metadata_props[:]
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        g.doc_string = ""
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else list(attr.graphs))
        for v in list(g.value_info) + list(g.input) + list(g.output):
            del v.metadata_props[:]
        for t in g.initializer:
            del t.metadata_props[:]
    for f in model.functions:
        for node in f.node:
            del node.metadata_props[:]


def _metadata(
    config: EngineConfig,
    head: QueryHead,
    spec: GraphSpec,
    export: ExportConfig,
    graph: FrameGraph | None,
    companion: str | None = None,
) -> dict[str, Any]:
    """The model-file contract's metadata plus how the file was made."""
    meta = make_metadata(config, head, spec, export.batch_max, "fp32", companion)
    if graph is not None:
        meta["parameters"] = {n: round(float(p), 8) for n, p in sorted(graph.named_parameters())}
    meta.update(opset=OPSET, exporter="torch.onnx.export(dynamo=True)", versions=versions())
    return meta


def versions() -> dict[str, str]:
    # no Python version or build tags (+cpu, +cu126): they do not change the graph, and leaving them out keeps
    # the file byte-identical across machines with the same libraries
    out = {"arr_coc_stream": __version__, "torch": torch.__version__.split("+")[0]}
    for mod in ("onnx", "onnxscript"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def write_model(model: onnx.ModelProto, path: Path, metadata: dict[str, Any]) -> None:
    """Write ``path`` with ``metadata`` in its ``metadata_props`` and ``<stem>.json`` beside it."""
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(metadata[key], sort_keys=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")


def convert_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Float16 copy of ``model`` keeping FP32 inputs and outputs (and :data:`FP16_KEEP_OPS` nodes in FP32).

    Returns:
        The converted model and the names of the nodes that still compute in FP32 (Casts excepted).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_KEEP_OPS))
    _strip(half)
    _topological_sort(half.graph)  # the converter appends its input Casts after their readers
    inferred = onnx.shape_inference.infer_shapes(half)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    kept = sorted(
        n.name
        for n in g.node
        if n.op_type != "Cast" and any(types.get(x) == onnx.TensorProto.FLOAT for x in [*n.input, *n.output])
    )
    return half, kept


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (stable: keeps the order otherwise)."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ModelError(f"cycle or missing input in the float16 graph near {pending[0].name!r}")
        ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ids]
        for n in ready:
            ordered.append(n)
            available.update(n.output)
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
