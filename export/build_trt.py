#!/usr/bin/env python
"""Build a TensorRT engine from an exported ONNX file (a thin wrapper over arr_coc_stream.trt_build).

Run it on the machine whose GPU will run the engine, with TensorRT 10.x or 11.x installed. The network is
strongly typed: the precision is the ONNX file's (``<name>.onnx`` FP32, ``<name>_fp16.onnx`` float16). Writes
``models/<name>.engine`` and ``models/<name>.engine.json`` (TensorRT version, GPU compute capability) and keeps a
timing cache in ``models/tensorrt.timing.cache``. Engines are never committed. A CLIP export's keyframe graph,
``<name>_clip.onnx`` beside the given file, is built too (``<name>_clip.engine``): the engine runs both.

    python export/build_trt.py                                   # the default model in models/
    python export/build_trt.py models/<name>_fp16.onnx --workspace-mib 2048
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from arr_coc_stream.config import EngineConfig  # noqa: E402
from arr_coc_stream.errors import ArrCocError  # noqa: E402
from arr_coc_stream.export import clip_model_path, default_name  # noqa: E402
from arr_coc_stream.trt_build import DEFAULT_WORKSPACE_MIB, TIMING_CACHE_NAME, BuildConfig, build_engine  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_trt.py", description=__doc__.splitlines()[0])
    p.add_argument("onnx", nargs="?", type=Path, default=ROOT / "models" / f"{default_name(EngineConfig())}.onnx",
                   help="exported .onnx file (default: the default model in models/)")
    p.add_argument("--output", type=Path, help="engine to write (default: <onnx stem>.engine beside it)")
    p.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB,
                   help=f"builder workspace limit in MiB (default {DEFAULT_WORKSPACE_MIB})")
    p.add_argument("--timing-cache", type=Path,
                   help=f"timing cache to reuse and update (default: {TIMING_CACHE_NAME} beside the ONNX file)")
    p.add_argument("--int8", action="store_true",
                   help="refused: INT8 needs explicit quantization (Q/DQ nodes) in the ONNX, which this graph lacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    builds = [BuildConfig(onnx=args.onnx, output=args.output, workspace_mib=args.workspace_mib,
                          timing_cache=args.timing_cache, int8=args.int8)]
    clip_onnx = clip_model_path(args.onnx)
    if clip_onnx.is_file():
        builds.append(BuildConfig(onnx=clip_onnx, output=clip_model_path(builds[0].engine_path),
                                  workspace_mib=args.workspace_mib, timing_cache=args.timing_cache, int8=args.int8))
    for build in builds:
        try:
            result = build_engine(build)
        except ArrCocError as exc:
            print(f"build_trt.py: error: {exc}", file=sys.stderr)
            return 2
        trt = result.info["tensorrt"]
        print(f"wrote {result.engine} ({result.engine.stat().st_size / 2**20:.1f} MiB) and {result.info_path.name}: "
              f"TensorRT {trt['version']}, {trt['gpu']} (compute capability "
              f"{'.'.join(map(str, trt['compute_capability']))}), {trt['precision']}, "
              f"batch 1..{result.info['model']['batch_max']}")
        print(f"timing cache {result.timing_cache} ({'reused and updated' if result.timing_cache_reused else 'created'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
