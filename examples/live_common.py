"""What the two live demos share: the window or headless output, the processing loop and the status line.

:func:`open_window` must run before ``arr_coc_stream`` (which imports PyAV) is imported: with PyAV loaded first,
``cv2.imshow`` can hang (DESIGN.md section 11). So this module imports only cv2 and the standard library at the
top, and :func:`parse_args` opens the window before it imports the library for the engine options (one per
``EngineConfig`` field, the same as ``arr-coc-stream run``'s).

In a window: the frame with the relevance heatmap, the selected cells and the foveal crop windows
(``arr_coc_stream.viz.draw_overlay``), the status in the window title; ``q`` or Esc closes it. Without a display
(or with ``--no-window``): the same drawing goes to an overlay video and a status line is printed (rewritten in
place on a terminal, one line a second otherwise). Both stop on ``--max-frames`` or Ctrl-C (SIGINT), close their
files and exit with status 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import cv2

WINDOW = "arr_coc_stream"


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--query", "-q", default="red", help="text query (default: %(default)s)")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames (default: run until Ctrl-C)")
    p.add_argument(
        "--pacing",
        choices=("latest_frame", "every_frame"),
        default="latest_frame",
        help="latest_frame keeps up with real time and drops frames; every_frame drops none (default: %(default)s)",
    )
    p.add_argument("--no-window", action="store_true", help="never open a window, even with a display")
    p.add_argument(
        "--overlay", default=None, help="overlay video written without a window (default: out/<demo>_overlay.mp4)"
    )
    p.add_argument("--jsonl", help="also write every result to this JSONL file")


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, bool]:
    """Parse the demo's arguments and the engine options; return them and whether the window opened.

    The window opens (when there is a display) before ``arr_coc_stream`` is imported for its engine options.
    """
    args = sys.argv[1:] if argv is None else argv
    windowed = False
    if not {"-h", "--help"} & set(args):
        known, _ = p.parse_known_args(args)
        windowed = open_window(known.no_window)
    from arr_coc_stream.cli import add_config_options

    add_config_options(p)
    return p.parse_args(args), windowed


def open_window(no_window: bool) -> bool:
    """Open the display window when a display and a GUI build of OpenCV exist; return whether it opened."""
    if no_window or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error as e:  # opencv-python-headless, or a display that refuses the connection
        print(f"no window ({str(e).strip().splitlines()[-1]}): writing an overlay video instead", file=sys.stderr)
        return False
    return True


class Status:
    """Running numbers for the status line: fps, latency, drops, tokens per frame, cuts."""

    def __init__(self) -> None:
        self.frames = self.dropped = self.cuts = self.reconnects = 0
        self.tokens = self.crop_tokens = 0
        self.latency_ms = 0.0
        self._t0 = time.monotonic()
        self._window: list[float] = []  # arrival times of the last frames, for the current fps

    def update(self, result: Any, latency_s: float) -> None:
        now = time.monotonic()
        self.frames += 1
        self.dropped += result.dropped
        self.cuts += int(result.cut)
        self.reconnects += int(result.gap > 0)
        self.tokens, self.crop_tokens = int(result.valid.sum()), result.total_budget
        self.latency_ms = 1000.0 * latency_s
        self._window = [t for t in self._window if now - t < 2.0] + [now]

    @property
    def fps(self) -> float:
        span = self._window[-1] - self._window[0] if len(self._window) > 1 else 0.0
        return (len(self._window) - 1) / span if span > 0 else 0.0

    def line(self) -> str:
        return (
            f"frames {self.frames} | {self.fps:5.1f} fps | latency {self.latency_ms:4.0f} ms | dropped "
            f"{self.dropped} | tokens {self.tokens}/frame, crops {self.crop_tokens} | cuts {self.cuts} | "
            f"reconnects {self.reconnects}"
        )


def run(name: str, open_source: Callable[[tuple[int, int]], Any], args: argparse.Namespace, windowed: bool) -> int:
    """Process the live source until the frame limit, Ctrl-C or a closed window; return the exit status.

    Args:
        name: demo name, for the default overlay path.
        open_source: builds the source given the work size (H, W); it must keep full-resolution frames.
        args: the parsed arguments (:func:`parse_args`).
        windowed: :func:`parse_args` opened the window.
    """
    # imported here, after the window exists: arr_coc_stream imports PyAV
    import arr_coc_stream as acs
    from arr_coc_stream.cli import config_options
    from arr_coc_stream.sinks import JsonlSink
    from arr_coc_stream.viz import OverlaySink, draw_overlay

    try:
        engine = acs.Engine(query=args.query, **config_options(args))
    except acs.ArrCocError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    status = Status()
    tty = sys.stdout.isatty()
    sinks: list[Any] = []
    try:
        src = open_source(engine.config.work_size)
    except acs.ArrCocError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    try:
        info = src.info
        print(
            f"{info.uri}: {info.width}x{info.height}, {info.fps or 0:.3f} fps, {info.codec}, pacing "
            f"{src.config.pacing}, query {args.query!r} -> terms {list(engine.query.terms)}",
            flush=True,
        )
        if args.jsonl:
            source_info = {k: getattr(info, k) for k in ("uri", "width", "height", "fps", "codec", "live")}
            sinks.append(JsonlSink(args.jsonl, {**engine.header(), "source": source_info}))
        if not windowed:
            overlay = args.overlay or os.path.join("out", f"{name}_overlay.mp4")
            sinks.append(OverlaySink(overlay, fps=info.fps, query=args.query))
            print(f"no window: overlay video -> {overlay}", flush=True)
        last_print = 0.0
        for frame in src:
            result = engine.process(
                frame.rgb, frame.time, index=frame.index, source_size=frame.source_size, reset=frame.reset
            )
            result.gap, result.dropped = frame.gap, frame.dropped
            for sink in sinks:
                sink.write(result, frame)
            status.update(result, time.monotonic() - frame.received)
            if windowed:
                cv2.imshow(WINDOW, cv2.cvtColor(draw_overlay(frame.full, result, query=args.query), cv2.COLOR_RGB2BGR))
                cv2.setWindowTitle(WINDOW, status.line())
                key = cv2.waitKey(1) & 0xFF
                if key in (ord("q"), 27) or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                    break
            elif tty:
                print("\r" + status.line(), end="", flush=True)
            elif time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                print(status.line(), flush=True)
            if args.max_frames is not None and status.frames >= args.max_frames:
                break
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    except acs.ArrCocError as e:
        print(f"\n{name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        try:
            for sink in sinks:
                sink.close()
        finally:
            src.close()
            if windowed:
                cv2.destroyAllWindows()
    print(("\n" if tty else "") + "done: " + status.line(), flush=True)
    return 0
