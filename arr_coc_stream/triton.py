"""A Triton Inference Server model repository for an exported graph: many live streams on one GPU server.

Triton's sequence batcher serves the per-frame graph as a stateful model. Each camera is a sequence (a
correlation id); Triton keeps every state of the graph per sequence as *implicit state* (``<state>_in`` is fed
from the previous request's ``<state>_out``, zeros on the first), sets the ``reset`` input on the request that
starts a sequence (the START control), and batches the requests of up to ``max_batch_size`` sequences into one
graph call (the *direct* strategy: a sequence keeps one batch slot). Clients send only the frame, ``dt`` and the
query inputs, and get the results back; no state crosses the network.

The repository holds one model per graph: the per-frame graph, and each companion graph of its query head (the
clip head's dense-CLIP keyframe graph) as a plain batched model::

    DIR/<name>/config.pbtxt
    DIR/<name>/1/model.onnx          (model.plan with a TensorRT engine)
    DIR/<name>_clip/config.pbtxt     (clip head only)
    DIR/<name>_clip/1/model.onnx

``config.pbtxt`` is protobuf text (Triton's ``ModelConfig``), written from the model file's :class:`GraphSpec`.
Every per-stream tensor of the graph has at least one dimension after the batch (:mod:`arr_coc_stream.spec`):
Triton wants the START control as [B, 1] and cannot declare an implicit state without dims.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ModelError
from .model_file import ModelFile, companion_path, read_model
from .spec import GraphSpec, TensorSpec

TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
}
CONTROL = "reset"  # the graph input Triton's sequence START drives


@dataclass(frozen=True)
class TritonConfig:
    """How Triton serves the graph.

    Attributes:
        name: the model's name in the repository (default: the model file's stem); companions get
            ``<name>_<companion>``.
        idle_timeout_s: a sequence with no request for this long is dropped and its slot freed (Triton's
            default is 1 s: a camera that pauses for a second would lose its state and its next request, sent
            without START, would be refused). The graph resets a stream itself after a pause longer than
            ``gap_limit_s`` when the client sets START again, so the timeout only bounds how long a dead
            camera holds a slot.
        queue_delay_us: how long the batcher waits for more sequences' requests to fill a batch, microseconds.
        instances: model instances (each with ``max_batch_size`` sequence slots).
    """

    name: str | None = None
    idle_timeout_s: float = 10.0
    queue_delay_us: int = 2000
    instances: int = 1

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError(f"TritonConfig.name must be a plain folder name, got {self.name!r}")
        if not self.idle_timeout_s > 0:
            raise ConfigError(f"TritonConfig.idle_timeout_s must be > 0, got {self.idle_timeout_s}")
        if self.queue_delay_us < 0:
            raise ConfigError(f"TritonConfig.queue_delay_us must be >= 0, got {self.queue_delay_us}")
        if self.instances < 1:
            raise ConfigError(f"TritonConfig.instances must be >= 1, got {self.instances}")


@dataclass(frozen=True)
class TritonModel:
    """One model written into a repository.

    Attributes:
        name: its name in the repository. folder: ``DIR/<name>``. config: its ``config.pbtxt``.
        model: the model file inside ``<folder>/1/``. stateful: served by the sequence batcher.
    """

    name: str
    folder: Path
    config: Path
    model: Path
    stateful: bool


def write_repository(
    model: str | os.PathLike[str], directory: str | os.PathLike[str], triton: TritonConfig | None = None
) -> list[TritonModel]:
    """Write a Triton model repository for an exported graph and its companions.

    Args:
        model: an exported ``.onnx`` (served by the onnxruntime backend) or a built TensorRT ``.engine`` with
            its ``.engine.json`` (the ``tensorrt_plan`` platform; it runs only on the GPU and TensorRT version it
            was built for). Companion graphs are taken from beside it.
        directory: the repository folder (created; models already in it are replaced).
        triton: serving options.

    Returns:
        the per-frame model first, then its companions.

    Raises:
        ModelError: not a per-frame graph of this library, a companion missing, or a state that does not start
            at zero (Triton's implicit state starts from zeros here).
    """
    triton = triton or TritonConfig()
    main = read_model(model)
    if main.companion is not None:
        raise ModelError(f"{model} is the {main.companion!r} companion graph; give the per-frame graph")
    name = triton.name or Path(model).stem
    written = [_write_model(main, Path(directory), name, triton, stateful=True)]
    for companion in main.metadata.get("companions", []):
        path = companion_path(model, companion)
        if not path.is_file():
            raise ModelError(f"{model}: its query head's {companion!r} graph {path} is missing; export it again")
        written.append(_write_model(read_model(path), Path(directory), f"{name}_{companion}", triton, stateful=False))
    return written


def model_config(
    spec: GraphSpec, name: str, platform: str, max_batch_size: int, triton: TritonConfig, stateful: bool
) -> str:
    """A model's ``config.pbtxt`` (protobuf text of Triton's ``ModelConfig``).

    Args:
        spec: the graph's inputs, states and outputs.
        platform: ``"onnxruntime_onnx"`` or ``"tensorrt_plan"``.
        max_batch_size: the largest batch the graph takes (its ``batch_max``).
        stateful: sequence batching with implicit state and the START control (the per-frame graph);
            otherwise dynamic batching (a companion graph).
    """
    controls = (CONTROL,) if stateful else ()
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        _tensors([t for t in spec.inputs if t.name not in controls]),
        "]",
        "output [",
        _tensors(list(spec.outputs)),
        "]",
    ]
    if stateful:
        for s in spec.states:
            if s.initial != 0.0:
                raise ModelError(f"state {s.name!r} starts at {s.initial}: a Triton repository needs zero states")
        states = ",\n".join(
            "    {\n"
            f'      input_name: "{s.in_name}"\n'
            f'      output_name: "{s.out_name}"\n'
            f"      data_type: {TRITON_DTYPES[s.dtype]}\n"
            f"      dims: {_dims(s)}\n"
            f"      initial_state {{ data_type: {TRITON_DTYPES[s.dtype]} dims: {_dims(s)} zero_data: true "
            f'name: "{s.name}_zeros" }}\n'
            "    }"
            for s in spec.states
        )
        lines += [
            "sequence_batching {",
            f"  max_sequence_idle_microseconds: {round(triton.idle_timeout_s * 1e6)}",
            f"  direct {{ max_queue_delay_microseconds: {triton.queue_delay_us} }}",
            "  control_input [",
            "    {",
            f'      name: "{CONTROL}"',
            "      control [ { kind: CONTROL_SEQUENCE_START bool_false_true: [ false, true ] } ]",
            "    }",
            "  ]",
            "  state [",
            states,
            "  ]",
            "}",
        ]
    else:
        lines += [f"dynamic_batching {{ max_queue_delay_microseconds: {triton.queue_delay_us} }}"]
    lines += [f"instance_group [ {{ count: {triton.instances} }} ]"]
    return "\n".join(lines) + "\n"


def _write_model(file: ModelFile, directory: Path, name: str, triton: TritonConfig, stateful: bool) -> TritonModel:
    engine = file.path.suffix == ".engine"
    folder = directory / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    target = folder / "1" / ("model.plan" if engine else "model.onnx")
    shutil.copyfile(file.path, target)
    platform = "tensorrt_plan" if engine else "onnxruntime_onnx"
    config = folder / "config.pbtxt"
    config.write_text(model_config(file.spec, name, platform, file.batch_max, triton, stateful))
    return TritonModel(name, folder, config, target, stateful)


def _tensors(tensors: list[TensorSpec]) -> str:
    return ",\n".join(f'  {{ name: "{t.name}" data_type: {TRITON_DTYPES[t.dtype]} dims: {_dims(t)} }}' for t in tensors)


def _dims(t: TensorSpec) -> str:
    return "[ " + ", ".join(str(d) for d in t.shape) + " ]"
