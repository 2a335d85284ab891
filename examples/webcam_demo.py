"""Relevance on a camera in a window, or headless into an overlay video.

The camera is anything ``cv2.VideoCapture`` opens: an index (``0``), a device path (``/dev/video0``), a URL, or
a video file (read like a camera: at its end it is reopened). With a display: the frame, the relevance heatmap
and the selected cells in a window (``q`` quits). Without one (or with ``--no-window``): an overlay video
(default ``out/webcam_demo_overlay.mp4``) and a status line with fps, latency (frame received -> result), dropped
frames, tokens per frame and cuts. Stops on ``--max-frames`` or Ctrl-C.

Run:
    python examples/webcam_demo.py                    # camera 0
    python examples/webcam_demo.py /dev/video2 --query "where is the red cup?"
    python examples/webcam_demo.py clip.mp4 --no-window --max-frames 100
"""

from __future__ import annotations

import argparse
import sys

import cv2  # first: the window must exist before PyAV is imported (see live_common)
import live_common


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "device",
        nargs="?",
        default="0",
        help="camera index, device path, URL or file for cv2.VideoCapture (default: 0)",
    )
    p.add_argument("--api", default="ANY", help="OpenCV backend: ANY, V4L2, FFMPEG, GSTREAMER... (default: ANY)")
    live_common.add_common_arguments(p)
    args, windowed = live_common.parse_args(p, argv)
    api = getattr(cv2, f"CAP_{args.api.upper()}", None)
    if api is None:
        p.error(f"unknown OpenCV backend {args.api!r}")
    device: int | str = int(args.device) if args.device.isdigit() else args.device

    def open_source(work_size: tuple[int, int]):
        from arr_coc_stream.sources import CameraSource, LiveConfig

        return CameraSource(device, size=work_size, keep_full=True, api=api, config=LiveConfig(pacing=args.pacing))

    return live_common.run("webcam_demo", open_source, args, windowed)


if __name__ == "__main__":
    sys.exit(main())
