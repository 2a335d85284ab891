"""Export the per-frame graph to ONNX, with its metadata (DESIGN.md section 8).

One file per configuration: opset 18, weights inside (``external_data=False``), the batch the only dynamic
dimension (1..``batch_max``), inputs ``frame, dt, reset, query_weights, query_targets`` and every ``<state>_in``,
outputs the results and every ``<state>_out``. The exporter is ``torch.export`` + ``torch.onnx`` (the "dynamo"
exporter, torch's default since 2.9): the TorchScript exporter is deprecated and cannot keep the batch dynamic
through this graph's shape arithmetic. Export is deterministic: node metadata (stack traces with file paths and
line numbers) is stripped and the proto serialised deterministically, so the same config gives the same bytes.

The metadata (configuration, shapes, ``batch_max``, channel registry, parameter values, input mode, opset and
library versions) is stored in the ONNX ``metadata_props`` (one JSON value per key) and in ``<name>.json``
beside the file. :func:`check_metadata` refuses a model whose metadata does not match a configuration.

``fp16=True`` also writes ``<name>_fp16.onnx``: a float16 conversion that keeps FP32 inputs and outputs and
keeps in FP32 the nodes listed in its metadata (``fp32_nodes``), for TensorRT's strongly typed builds.

With ``query_encoder="clip"`` the export writes two graphs: ``<name>.onnx``, the per-frame graph with the CLIP
model's basis and neutral prompts as constants (inputs ``text_emb``, ``clip_feat``, ``clip_key`` and the CLIP
states), and ``<name>_clip.onnx``, the dense-CLIP keyframe graph (``image [B, H, W, 3] uint8 -> clip_feat
[B, D, gh, gw]``, format ``arr_coc_stream.dense_clip``). Both carry the model's basis in their metadata.

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
import re
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from . import channels
from .config import EngineConfig
from .errors import ConfigError, ModelError
from .graph import build_graph, frame_shape, initial_state, input_names, output_names, state_names, state_shapes

if TYPE_CHECKING:
    import onnx

    from .clip import ClipModel
    from .trt_compat import CompatReport

OPSET = 18
FORMAT = "arr_coc_stream.frame_graph"
CLIP_FORMAT = "arr_coc_stream.dense_clip"
SCHEMA_VERSION = 1
# Fields of EngineConfig that do not shape the graph: a model is valid whatever their value. The CLIP model's
# path differs between machines: a CLIP graph is checked against the loaded model's basis instead, and the
# dense-CLIP graph against the keyframe input size.
ENGINE_ONLY_FIELDS = ("device", "gap_limit_s", "clip_model", "clip_size", "clip_interval_s",
                      "clip_motion_threshold")
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
class ExportedModel:
    """What :func:`export_onnx` wrote."""

    path: Path
    metadata_path: Path
    metadata: dict[str, Any]
    tensorrt: CompatReport
    fp16_path: Path | None = None
    fp16_metadata_path: Path | None = None
    clip_path: Path | None = None  # the dense-CLIP graph, with query_encoder="clip"
    clip_metadata: dict[str, Any] | None = None
    clip_tensorrt: CompatReport | None = None


def default_name(config: EngineConfig, export: ExportConfig | None = None) -> str:
    """File stem naming the shapes a model is built for, e.g. ``frame_graph_256x256_g32x32_c8_k200_b1``; a CLIP
    configuration appends the model's folder name (``..._b1_clip-vit-base-patch16``)."""
    export = export or ExportConfig()
    h, w = frame_shape(config)
    gh, gw = config.grid
    name = f"frame_graph_{h}x{w}_g{gh}x{gw}_c{config.cell_px}_k{config.k}_b{export.batch_max}"
    if config.uses_clip:
        name += "_" + re.sub(r"[^A-Za-z0-9.-]+", "-", Path(str(config.clip_model)).name).strip("-.")
    return name


def export_onnx(config: EngineConfig | None, path: str | os.PathLike[str], export: ExportConfig | None = None,
                *, clip: ClipModel | None = None, **options: Any) -> ExportedModel:
    """Export the per-frame graph of ``config`` to ``path`` (``.onnx``) with ``<name>.json`` beside it, and with
    ``query_encoder="clip"`` the dense-CLIP graph to ``<name>_clip.onnx``.

    Args:
        config: the engine configuration (defaults when None).
        path: the ``.onnx`` file to write; its folder is created.
        export: export options; keyword ``options`` (``batch_max``, ``fp16``) override its fields.
        clip: the loaded CLIP model of a CLIP configuration (loaded from ``config.clip_model`` when None).

    Returns:
        An :class:`ExportedModel` with the paths written, the metadata and the TensorRT compatibility reports.
    """
    import onnx

    config = config or EngineConfig()
    export = dataclasses.replace(export or ExportConfig(), **options)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"the model path must end in .onnx, got {path}")
    if config.uses_clip and clip is None:
        from .clip import load_clip

        clip = load_clip(str(config.clip_model))
    path.parent.mkdir(parents=True, exist_ok=True)
    model = trace_onnx(config, export.batch_max, clip)
    metadata = build_metadata(config, export, model, precision="fp32", clip=clip)
    result = ExportedModel(path, path.with_suffix(".json"), metadata, _write_checked(model, path, metadata))
    if export.fp16:
        result.fp16_path = path.with_name(f"{path.stem}_fp16.onnx")
        result.fp16_metadata_path = result.fp16_path.with_suffix(".json")
        _write_fp16(model, result.fp16_path, metadata)
    if clip is not None:
        dense = trace_clip_onnx(config, export.batch_max, clip)
        result.clip_metadata = build_clip_metadata(config, export, dense, clip, precision="fp32")
        result.clip_path = clip_model_path(path)
        result.clip_tensorrt = _write_checked(dense, result.clip_path, result.clip_metadata)
        if export.fp16:
            _write_fp16(dense, clip_model_path(result.fp16_path), result.clip_metadata)  # type: ignore[arg-type]
        onnx.checker.check_model(os.fspath(result.clip_path), full_check=True)
    onnx.checker.check_model(os.fspath(path), full_check=True)
    return result


def clip_model_path(model: str | os.PathLike[str]) -> Path:
    """The dense-CLIP keyframe graph beside a per-frame model: ``models/<name>.onnx`` ->
    ``models/<name>_clip.onnx`` (``.engine`` likewise, ``<name>_fp16.onnx`` -> ``<name>_fp16_clip.onnx``)."""
    path = Path(model)
    return path.with_name(f"{path.stem}_clip{path.suffix}")


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


def trace_onnx(config: EngineConfig, batch_max: int, clip: ClipModel | None = None) -> onnx.ModelProto:
    """Trace the per-frame graph with ``torch.export`` and translate it to a clean, deterministic ONNX model."""
    graph = build_graph(config, None if clip is None else clip.text).eval()
    # batch 2 for the example: torch.export specialises a dimension of size 1
    example = example_inputs(config, 2, None if clip is None else clip.dim)
    return _to_onnx(graph, example, input_names(config), list(output_names(config)), batch_max)


def trace_clip_onnx(config: EngineConfig, batch_max: int, clip: ClipModel) -> onnx.ModelProto:
    """Trace the dense-CLIP keyframe graph (position embeddings already interpolated: a constant here)."""
    dense = clip.dense(config.grid, config.clip_size).eval()
    h, w = dense.input_size
    return _to_onnx(dense, (torch.zeros(2, h, w, 3, dtype=torch.uint8),), ["image"], ["clip_feat"], batch_max)


def _to_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], names: list[str], outputs: list[str],
             batch_max: int) -> onnx.ModelProto:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"exporting to ONNX needs onnx and onnxscript ({exc.name} is missing): "
                         "pip install -e '.[dev]'") from exc
    batch = torch.export.Dim("batch", min=1, max=max(batch_max, 2))
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(module, example, None, dynamo=True, opset_version=OPSET, input_names=names,
                                    output_names=outputs, dynamic_shapes=tuple({0: batch} for _ in names),
                                    external_data=False, optimize=False, verbose=False)
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
    for p in (passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
              passes.DeduplicateInitializersPass(), passes.CommonSubexpressionEliminationPass(),
              passes.RemoveUnusedNodesPass(), passes.NameFixPass()):
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


def example_inputs(config: EngineConfig, batch: int, clip_dim: int | None = None) -> tuple[torch.Tensor, ...]:
    """Graph inputs of the right shapes and dtypes (a black frame, fresh state, no query)."""
    h, w = frame_shape(config)
    head = (torch.zeros(batch, h, w, 3, dtype=torch.uint8), torch.full((batch,), 1 / 30),
            torch.ones(batch, dtype=torch.bool))
    if config.uses_clip:
        gh, gw = config.grid
        query = (torch.zeros(batch, clip_dim), torch.zeros(batch, clip_dim, gh, gw),  # type: ignore[arg-type]
                 torch.ones(batch, dtype=torch.bool))
    else:
        query = (torch.zeros(batch, channels.NUM_CHANNELS), torch.zeros(batch, channels.NUM_CHANNELS))
    return (*head, *query, *initial_state(config, batch, clip_dim=clip_dim).values())


def _strip(model: onnx.ModelProto) -> None:
    """Remove what varies between checkouts and machines (stack traces, paths) from the proto."""
    model.producer_name, model.producer_version = "arr_coc_stream", _version()
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


def build_metadata(config: EngineConfig, export: ExportConfig, model: onnx.ModelProto, precision: str,
                   clip: ClipModel | None = None) -> dict[str, Any]:
    """Everything a runner needs to validate and feed the per-frame model, as plain JSON data."""
    graph = build_graph(config, None if clip is None else clip.text)
    h, w = frame_shape(config)
    shapes = state_shapes(config, 1, None if clip is None else clip.dim)
    meta = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "precision": precision,
        "config": graph_config(config),
        "batch_max": export.batch_max,
        "input_mode": config.input_mode,
        "frame_size": [h, w],
        "work_size": list(config.work_size),
        "grid": list(config.grid),
        "cell_px": config.cell_px,
        "k": config.k,
        "inputs": _io(model.graph.input),
        "outputs": _io(model.graph.output),
        "state": {s: list(shapes[s][1:]) for s in state_names(config)},
        "channels": channels.registry(),
        "parameters": {n: round(float(p), 8) for n, p in sorted(graph.named_parameters())},
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=True)",
        "versions": versions(),
    }
    if clip is not None:
        meta["clip"] = {"model": clip.name, **clip.text.metadata()}
    return meta


def build_clip_metadata(config: EngineConfig, export: ExportConfig, model: onnx.ModelProto, clip: ClipModel,
                        precision: str) -> dict[str, Any]:
    """Metadata of the dense-CLIP keyframe graph: its input size, grid, model and basis."""
    return {
        "format": CLIP_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "precision": precision,
        "batch_max": export.batch_max,
        "input_size": list(clip.input_size(config.grid, config.clip_size)),
        "grid": list(config.grid),
        "clip_size": config.clip_size,
        "patch_size": clip.patch_size,
        "image_mean": list(clip.image_mean),
        "image_std": list(clip.image_std),
        "inputs": _io(model.graph.input),
        "outputs": _io(model.graph.output),
        "clip": {"model": clip.name, **clip.text.metadata()},
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=True)",
        "versions": versions(),
    }


def _io(values: Any) -> list[dict[str, Any]]:
    return [{"name": v.name, "dtype": _onnx_dtype(v), "shape": _onnx_shape(v)} for v in values]


def graph_config(config: EngineConfig) -> dict[str, Any]:
    """The configuration fields that shape the graph (JSON-ready)."""
    d = json.loads(json.dumps(config.to_dict()))
    for name in ENGINE_ONLY_FIELDS:
        d.pop(name, None)
    return d


def versions() -> dict[str, str]:
    # no Python version or build tags (+cpu, +cu126): they do not change the graph, and leaving them out keeps
    # the file byte-identical across machines with the same libraries
    out = {"arr_coc_stream": _version(), "torch": torch.__version__.split("+")[0]}
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


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Metadata of an exported model, from its ``metadata_props``.

    Raises:
        ModelError: the file is missing, not ONNX, or was not exported by this library.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelError(f"{path} is not a readable ONNX file: {exc}") from exc
    return parse_metadata({p.key: p.value for p in model.metadata_props}, path)


def parse_metadata(props: dict[str, str], source: str | os.PathLike[str]) -> dict[str, Any]:
    """Decode ``metadata_props`` (one JSON value per key) and check it names this library's graph."""
    try:
        meta = {k: json.loads(v) for k, v in props.items()}
    except json.JSONDecodeError as exc:
        raise ModelError(f"{source}: metadata is not this library's (not JSON: {exc})") from exc
    if meta.get("format") not in (FORMAT, CLIP_FORMAT):
        raise ModelError(f"{source} was not exported by arr_coc_stream (no {FORMAT!r} metadata)")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{source}: metadata schema {meta.get('schema_version')} is not {SCHEMA_VERSION}; "
                         "re-export it with this version")
    return meta


def check_model(meta: dict[str, Any], config: EngineConfig, source: str | os.PathLike[str],
                clip: ClipModel | None = None, dense: bool = False) -> None:
    """Refuse a per-frame (or, with ``dense``, dense-CLIP) model not exported for ``config`` and ``clip``.

    Raises:
        ModelError: a graph-shaping field differs, the file is the other kind of graph, or its CLIP basis is not
            the loaded model's.
    """
    kinds = {FORMAT: "a per-frame graph", CLIP_FORMAT: "a dense-CLIP keyframe graph"}
    want_format = CLIP_FORMAT if dense else FORMAT
    if meta.get("format") != want_format:
        raise ModelError(f"{source} is {kinds[meta.get('format')]}, not {kinds[want_format]}")
    if dense:
        if clip is None:
            raise ModelError(f"{source}: a dense-CLIP graph runs only with query_encoder='clip'")
        want = {"grid": list(config.grid), "input_size": list(clip.input_size(config.grid, config.clip_size))}
        diffs = [f"{k}: model {meta.get(k)!r}, config {v!r}" for k, v in want.items() if meta.get(k) != v]
        if diffs:
            raise ModelError(f"{source} was exported for another configuration ({'; '.join(diffs)}); re-export it")
    else:
        check_metadata(meta, config, source)
    if clip is not None and not clip.text.matches(meta.get("clip", {})):
        raise ModelError(f"{source} was exported with another CLIP model ({meta.get('clip', {}).get('model')}, "
                         f"basis {meta.get('clip', {}).get('digest')}) than {clip.name} (basis {clip.text.digest()}); "
                         "re-export it with this model")


def check_metadata(meta: dict[str, Any], config: EngineConfig, source: str | os.PathLike[str]) -> None:
    """Refuse a model built for another configuration, naming every field that differs.

    Raises:
        ModelError: a graph-shaping field of ``config`` differs from the model's.
    """
    want, have = graph_config(config), meta.get("config", {})
    diffs = [f"{k}: model {have.get(k)!r}, config {want[k]!r}" for k in sorted(want) if have.get(k) != want[k]]
    if diffs:
        raise ModelError(f"{source} was exported for another configuration ({'; '.join(diffs)}); "
                         "pass the model's options or re-export it with export/export_onnx.py")


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
    kept = sorted(n.name for n in g.node if n.op_type != "Cast"
                  and any(types.get(x) == onnx.TensorProto.FLOAT for x in [*n.input, *n.output]))
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


def _onnx_dtype(v: Any) -> str:
    from onnx import helper

    return str(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))


def _onnx_shape(v: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


def _version() -> str:
    from . import __version__

    return __version__
