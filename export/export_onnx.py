#!/usr/bin/env python
"""Export the per-frame graph to ONNX (a thin wrapper over :func:`arr_coc_stream.export_onnx`).

With no arguments it writes the default model, ``models/frame_graph_256x256_g32x32_c8_k200_b1.onnx`` with its
``.json``: frames arrive at the work resolution (256x256; the decoder or the engine resizes them), batch 1.
``--height/--width`` other than the work size make a graph that takes full frames of that size and does the area
downscale itself (best on a GPU). ``--clip-model`` exports the CLIP query encoder's pair: the per-frame graph with
that model's basis and ``<name>_clip.onnx``, its dense-CLIP keyframe graph. Then it checks each graph against
TensorRT's ONNX support and prints the verdict.

    python export/export_onnx.py
    python export/export_onnx.py --height 720 --width 1280 --batch-max 4 --fp16 --output models/hd.onnx
    python export/export_onnx.py --clip-model path/to/clip-vit-base-patch16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from arr_coc_stream.config import EngineConfig  # noqa: E402
from arr_coc_stream.errors import ArrCocError  # noqa: E402
from arr_coc_stream.export import ExportConfig, default_name, export_onnx  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export_onnx.py", description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, help="frame height the graph takes (default: the work height)")
    p.add_argument("--width", type=int, help="frame width the graph takes (default: the work width)")
    p.add_argument("--grid", type=int, nargs=2, metavar=("GH", "GW"), help="cell grid (default 32 32)")
    p.add_argument("--cell-px", type=int, help="work-resolution pixels per cell (default 8)")
    p.add_argument("--k", type=int, help="maximum selected cells (default 200)")
    p.add_argument("--clip-model", help="CLIP folder or hub id: also export the dense-CLIP keyframe graph")
    p.add_argument("--clip-size", type=int, help="short side of the CLIP keyframe input in pixels (default 448)")
    p.add_argument("--batch-max", type=int, default=1, help="largest batch of streams per call (default 1)")
    p.add_argument("--fp16", action="store_true", help="also write <name>_fp16.onnx (FP32 inputs and outputs)")
    p.add_argument("--output", type=Path, help="the .onnx to write (default: models/<name>.onnx)")
    return p


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    options = {k: v for k, v in (("grid", args.grid), ("cell_px", args.cell_px), ("k", args.k),
                                 ("clip_model", args.clip_model), ("clip_size", args.clip_size)) if v is not None}
    if args.clip_model is not None:
        options["query_encoder"] = "clip"
    work = EngineConfig(**options).work_size
    if (args.height is None) != (args.width is None):
        raise SystemExit("export_onnx.py: error: give both --height and --width, or neither")
    if args.height is not None and (args.height, args.width) != work:
        options.update(input_mode="full", frame_size=(args.height, args.width))
    return EngineConfig(**options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        export = ExportConfig(batch_max=args.batch_max, fp16=args.fp16)
        path = args.output or ROOT / "models" / f"{default_name(config, export)}.onnx"
        result = export_onnx(config, path, export)
    except ArrCocError as exc:
        print(f"export_onnx.py: error: {exc}", file=sys.stderr)
        return 2
    size = result.path.stat().st_size
    print(f"wrote {result.path} ({size / 1024:.0f} KiB) and {result.metadata_path.name}: input {config.input_mode} "
          f"{list(result.metadata['frame_size'])}, grid {list(config.grid)}, k {config.k}, "
          f"batch 1..{export.batch_max}, opset {result.metadata['opset']}")
    if result.fp16_path is not None:
        print(f"wrote {result.fp16_path} and {result.fp16_metadata_path.name} (float16, FP32 inputs and outputs)")
    print(result.tensorrt.verdict())
    ok = result.tensorrt.ok
    if result.clip_path is not None:
        meta = result.clip_metadata or {}
        print(f"wrote {result.clip_path} ({result.clip_path.stat().st_size / 2**20:.1f} MiB): dense CLIP of "
              f"{meta['clip']['model']}, input {meta['input_size']}, features [batch, {meta['clip']['dim']}, "
              f"{config.grid[0]}, {config.grid[1]}]")
        print(result.clip_tensorrt.verdict())  # type: ignore[union-attr]
        ok = ok and result.clip_tensorrt.ok  # type: ignore[union-attr]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
