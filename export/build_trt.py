#!/usr/bin/env python
"""Build TensorRT engines from an exported ONNX file: ``arr-coc-stream build-trt`` under another name.

Run it on the machine whose GPU will run the engine, with TensorRT 10.x or 11.x installed. The network is
strongly typed: the precision is the ONNX file's (``<name>.onnx`` FP32, ``<name>_fp16.onnx`` float16). Writes
``models/<name>.engine`` and ``models/<name>.engine.json`` (TensorRT version, GPU compute capability) and keeps a
timing cache in ``models/tensorrt.timing.cache``. Engines are never committed. The companion graphs the file's
metadata names (a clip export's ``<name>_clip.onnx``) are built too: the engine runs them all.

    python export/build_trt.py                                   # the default model in models/
    python export/build_trt.py models/<name>_fp16.onnx --workspace-mib 2048
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from arr_coc_stream.cli import command_main

if __name__ == "__main__":
    sys.exit(command_main("build-trt", prog="build_trt.py"))
