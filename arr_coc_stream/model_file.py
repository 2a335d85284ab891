"""The model-file contract: the metadata every exported graph carries, and how a runtime reads it (DESIGN.md
section 8).

Every ``.onnx`` file the exporter writes holds its metadata in the ONNX ``metadata_props`` (one JSON value per
key) and in ``<name>.json`` beside it; a TensorRT engine holds it in ``<name>.engine.json`` (under ``"model"``).
The metadata names:

- ``format`` (a per-frame graph or a head's companion graph), ``schema_version``, ``version`` (the library's);
- ``config``: the :class:`~arr_coc_stream.config.EngineConfig` it was exported with (all but ``device``);
- ``head``: the query head's name and constants (the clip head's basis), checked by the head on load;
- ``graph``: its :class:`~arr_coc_stream.spec.GraphSpec`, the input mode and frame size, ``batch_max``;
- ``companions``: the names of the head's companion graphs, files ``<stem>_<name>`` beside it.

A model file defines its configuration: :meth:`ModelFile.resolve` makes the engine's configuration from it, so
``run(source, backend="onnxruntime", model=path)`` needs nothing else, and an explicit option that contradicts a
field that shapes the graph raises :class:`~arr_coc_stream.errors.ConfigError` naming both values.

    >>> from arr_coc_stream.model_file import read_model
    >>> model = read_model("models/frame_graph_256x256_g32x32_c8_k200_b1.onnx")  # doctest: +SKIP
    >>> model.resolve(None, {"k": 100})  # doctest: +SKIP
    ConfigError: models/...onnx: k=100 contradicts the model's k=200; ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .channels import registry
from .config import EngineConfig
from .errors import ConfigError, ModelError
from .spec import GraphSpec

if TYPE_CHECKING:
    from .query import QueryHead

FORMAT = "arr_coc_stream.frame_graph"
COMPANION_FORMAT = "arr_coc_stream.companion"
SCHEMA_VERSION = 3
_KINDS = {FORMAT: "a per-frame graph", COMPANION_FORMAT: "a companion graph"}


def companion_path(model: str | os.PathLike[str], name: str) -> Path:
    """A head's companion graph beside a per-frame model: ``models/<stem>.onnx`` -> ``models/<stem>_<name>.onnx``
    (``.engine`` likewise, ``<stem>_fp16.onnx`` -> ``<stem>_fp16_<name>.onnx``)."""
    path = Path(model)
    return path.with_name(f"{path.stem}_{name}{path.suffix}")


def make_metadata(
    config: EngineConfig, head: QueryHead, spec: GraphSpec, batch_max: int, precision: str, companion: str | None = None
) -> dict[str, Any]:
    """The contract's part of a model file's metadata (the exporter adds how it was made).

    Args:
        companion: the companion's name for a head's companion graph; None for the per-frame graph.
    """
    meta: dict[str, Any] = {
        "format": FORMAT if companion is None else COMPANION_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "version": __version__,
        "precision": precision,
        "config": {k: v for k, v in config.to_json().items() if k != "device"},
        "head": {"name": head.name, **head.metadata()},
        "graph": spec.to_dict(),
        "batch_max": batch_max,
    }
    if companion is None:
        meta.update(
            input_mode=config.input_mode,
            frame_size=list(config.frame_shape),
            work_size=list(config.work_size),
            grid=list(config.grid),
            k=config.k,
            channels=registry(),
            companions=sorted(head.companions()),
        )
    else:
        meta["companion"] = companion
    return meta


@dataclass(frozen=True)
class ModelFile:
    """An exported graph's metadata, read from its file.

    Attributes:
        path: the ``.onnx`` or ``.engine`` file.
        metadata: the decoded metadata (see the module docstring).
    """

    path: Path
    metadata: dict[str, Any]

    @classmethod
    def from_props(cls, props: Mapping[str, str], path: str | os.PathLike[str]) -> ModelFile:
        """Decode ONNX ``metadata_props`` (one JSON value per key) and check they are this library's.

        Raises:
            ModelError: not this library's metadata, or an older schema.
        """
        try:
            meta = {k: json.loads(v) for k, v in props.items()}
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: metadata is not this library's (not JSON: {exc})") from exc
        return cls.from_metadata(meta, path)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], path: str | os.PathLike[str]) -> ModelFile:
        if meta.get("format") not in _KINDS:
            raise ModelError(f"{path} was not exported by arr_coc_stream (no {FORMAT!r} metadata)")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ModelError(
                f"{path}: metadata schema {meta.get('schema_version')} is not {SCHEMA_VERSION}; "
                "re-export it with this version"
            )
        return cls(Path(path), meta)

    @property
    def spec(self) -> GraphSpec:
        return GraphSpec.from_dict(self.metadata["graph"])

    @property
    def batch_max(self) -> int:
        return int(self.metadata["batch_max"])

    @property
    def companion(self) -> str | None:
        """The companion's name for a head's companion graph, None for a per-frame graph."""
        return self.metadata.get("companion")

    def resolve(self, config: EngineConfig | None, options: Mapping[str, Any]) -> EngineConfig:
        """The engine configuration this model runs with.

        Args:
            config: a whole configuration: every field that shapes the graph must equal the model's.
            options: or explicit :class:`EngineConfig` options: those that shape the graph must equal the model's,
                the others (``device``, ``gap_limit_s``, ``clip_model``...) override the model's values.

        Raises:
            ConfigError: a value contradicts the model (naming the field, both values and the file), or both a
                config and options were given.
        """
        recorded = self.metadata["config"]
        if config is not None:
            if options:
                raise ConfigError(f"give a config or options, not both (got options {sorted(options)})")
            mine = config.graph_fields()
            diffs = [
                f"{k}: config {mine[k]!r}, model {recorded.get(k)!r}"
                for k in sorted(mine)
                if recorded.get(k) != mine[k]
            ]
            if diffs:
                raise ConfigError(
                    f"{self.path} was exported for another configuration ({'; '.join(diffs)}); pass "
                    "the model's options or re-export it with export/export_onnx.py"
                )
            return config
        resolved = EngineConfig.from_options(**{**recorded, **options})
        mine = resolved.graph_fields()
        diffs = [
            f"{k}={mine[k]!r} contradicts the model's {k}={recorded.get(k)!r}"
            for k in sorted(options)
            if k in mine and recorded.get(k) != mine[k]
        ]
        if diffs:
            raise ConfigError(
                f"{self.path}: {'; '.join(diffs)}; leave the option out (the model file defines it) "
                "or re-export the model with it"
            )
        return resolved

    def check(self, spec: GraphSpec, head: QueryHead, companion: str | None = None) -> None:
        """Refuse a file that is not the graph ``spec`` describes for ``head``.

        Raises:
            ModelError: the file is the other kind of graph, its spec differs, or it was made with another head or
                other head constants.
        """
        want = FORMAT if companion is None else COMPANION_FORMAT
        if self.metadata["format"] != want or self.companion != companion:
            what = _KINDS[want] if companion is None else f"the {companion!r} companion graph"
            got = _KINDS[self.metadata["format"]] + (f" ({self.companion!r})" if self.companion else "")
            raise ModelError(f"{self.path} is {got}, not {what}")
        recorded = self.metadata.get("head", {})
        if recorded.get("name") != head.name:
            raise ModelError(f"{self.path} was exported for the query head {recorded.get('name')!r}, not {head.name!r}")
        head.check_metadata(recorded, self.path)
        diffs = self.spec.differences(spec)
        if diffs:
            raise ModelError(
                f"{self.path} does not match this configuration's graph (model vs config: "
                f"{'; '.join(diffs)}); re-export it"
            )


def read_model(path: str | os.PathLike[str]) -> ModelFile:
    """Read an exported ``.onnx`` file's metadata (needs the ``onnx`` package) or a built ``.engine``'s JSON.

    Raises:
        ModelError: the file is missing, unreadable, or not this library's.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    if path.suffix == ".engine":
        return ModelFile.from_metadata(engine_info(path)["model"], path)
    try:
        import onnx
    except ImportError as exc:
        raise ModelError("reading an ONNX file's metadata needs the onnx package: pip install onnx") from exc
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable ONNX file: {exc}") from exc
    return ModelFile.from_props({p.key: p.value for p in model.metadata_props}, path)


def engine_info(engine: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON beside a built engine: ``{"model": its ONNX file's metadata, "tensorrt": how it was built}``.

    Raises:
        ModelError: the JSON is missing.
    """
    path = engine_json_path(engine)
    if not path.is_file():
        raise ModelError(f"{engine} has no {path.name} beside it; rebuild it with export/build_trt.py")
    return json.loads(path.read_text())


def engine_json_path(engine: str | os.PathLike[str]) -> Path:
    """``<name>.engine`` -> ``<name>.engine.json`` (``<name>.json`` is the ONNX file's metadata)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")
