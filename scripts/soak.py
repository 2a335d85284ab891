"""Soak: run the engine on a loopback RTSP stream for ten minutes and check that resident memory stays flat.

Not a CI test (it takes ``--seconds``, 600 by default): run it by hand after a change to a source, the engine or a
sink, and put its figures in the change's note. It starts ``tests/rtsp_server.py`` (the system python with
Debian's GStreamer, as the live tests do), streams the numbered clip through :func:`arr_coc_stream.stream` with the
JSONL going to ``/dev/null`` (the sink's work without the disk), and samples this process's resident set size
(``VmRSS``) every ``--every`` seconds. After a ``--warmup`` (allocator pools, thread pools, the decoder's buffers
settling) every sample must lie within ``--tolerance`` (5%) of the first one; the exit status says whether it did.

Usage:
    python scripts/soak.py [--seconds 600] [--every 10] [--warmup 60] [--tolerance 0.05]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import arr_coc_stream as acs  # noqa: E402
from arr_coc_stream.sources import StreamSource  # noqa: E402
from tests.test_live import WORK, RtspServer, encode_clip  # noqa: E402


def rss_mib() -> float:
    """This process's resident set size in MiB, from /proc (no psutil needed)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0, help="how long to stream (default 600)")
    p.add_argument("--every", type=float, default=10.0, help="seconds between memory samples (default 10)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the reference sample (default 60)")
    p.add_argument("--tolerance", type=float, default=0.05, help="largest relative change allowed (default 0.05)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RtspServer(encode_clip(Path(tmp)), Path(tmp))
        server.start()
        try:
            samples: list[tuple[float, float, int]] = []  # (seconds, RSS MiB, frames)
            frames = dropped = 0
            start = next_sample = time.monotonic()
            with acs.stream(StreamSource(server.url(), size=WORK), "red", jsonl=os.devnull) as results:
                for r in results:
                    frames += 1
                    dropped += r.dropped
                    now = time.monotonic()
                    if now >= next_sample:
                        samples.append((now - start, rss_mib(), frames))
                        print(f"{now - start:6.0f} s  RSS {samples[-1][1]:7.1f} MiB  frames {frames}", flush=True)
                        next_sample += args.every
                    if now - start >= args.seconds:
                        break
        finally:
            server.stop()
    steady = [s for s in samples if s[0] >= args.warmup]
    ref = steady[0][1]
    low, high = min(s[1] for s in steady), max(s[1] for s in steady)
    change = max(high - ref, ref - low) / ref
    print(
        f"\n{frames} frames in {samples[-1][0]:.0f} s ({frames / samples[-1][0]:.1f} fps), {dropped} dropped by "
        f"latest_frame pacing; RSS after {args.warmup:.0f} s warm-up {ref:.1f} MiB, min {low:.1f}, max {high:.1f}, "
        f"end {steady[-1][1]:.1f} MiB: largest change {100 * change:.1f}% (limit {100 * args.tolerance:.0f}%)"
    )
    return 0 if change <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
