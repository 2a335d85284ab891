#!/usr/bin/env python
"""Export the per-frame graph to ONNX: ``arr-coc-stream export`` under another name (see ``--help``).

With no arguments it writes the default model, ``models/frame_graph_256x256_g32x32_c8_k200_b1.onnx`` with its
``.json``: frames arrive at the work resolution (256x256; the decoder or the engine resizes them), batch 1.
``--frame-size H W`` makes a graph that takes full frames of that size and does the area downscale itself (best
on a GPU). ``--clip-model`` exports the clip query head's pair: the per-frame graph with that model's basis and
``<name>_clip.onnx``, its dense-CLIP keyframe graph. Then it checks each graph against TensorRT's ONNX support and
prints the verdict; ``--tensorrt`` also builds the engines where TensorRT is installed.

    python export/export_onnx.py
    python export/export_onnx.py --frame-size 720 1280 --batch-max 4 --fp16 --output models/hd.onnx
    python export/export_onnx.py --clip-model path/to/clip-vit-base-patch16
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from arr_coc_stream.cli import command_main

if __name__ == "__main__":
    sys.exit(command_main("export", prog="export_onnx.py"))
