"""Relevance on a live network stream (RTSP, HTTP or TCP) in a window, or headless into an overlay video.

With a display: the frame, the relevance heatmap and the selected cells in a window (``q`` quits). Without one
(or with ``--no-window``): an overlay video (default ``out/rtsp_demo_overlay.mp4``) and a status line with fps,
latency (frame received -> result), dropped frames, tokens per frame and cuts. Stops on ``--max-frames`` or
Ctrl-C; the stream reconnects by itself when it drops.

Run:
    python examples/rtsp_demo.py rtsp://127.0.0.1:8554/stream --query "red"
    python examples/rtsp_demo.py rtsp://camera.local/stream --transport udp --no-window --max-frames 300
"""

from __future__ import annotations

import argparse
import sys

import cv2  # noqa: F401  (first: the window must exist before PyAV is imported, see live_common)
import live_common


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="stream address: rtsp://, rtsps://, http(s):// or tcp://")
    p.add_argument("--transport", choices=("tcp", "udp"), default="tcp", help="RTSP transport (default: tcp)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds an open may take (default: 10)")
    live_common.add_common_arguments(p)
    args, windowed = live_common.parse_args(p, argv)

    def open_source(work_size: tuple[int, int]):
        from arr_coc_stream.sources import LiveConfig, StreamSource

        return StreamSource(
            args.url,
            size=work_size,
            keep_full=True,
            transport=args.transport,
            config=LiveConfig(pacing=args.pacing, open_timeout_s=args.timeout),
        )

    return live_common.run("rtsp_demo", open_source, args, windowed)


if __name__ == "__main__":
    sys.exit(main())
