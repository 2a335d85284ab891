"""RTSP kill/restart check: the loopback server dies for ``--outage`` seconds, ``--cycles`` times in a row, and the
stream must come back each time with the gap reported, within ``--max-gap`` seconds, no frame duplicated or lost.

Not a CI test (it measures wall-clock gaps, which a loaded machine stretches): run it by hand after a change to
the live sources and put its figures in the change's note. It uses the live tests' numbered clip and server
(``tests/test_live.py``, ``tests/rtsp_server.py``): each frame carries its number in its pixels, and a restarted
server carries on with the numbers a camera would have reached, so the frames lost in an outage are known exactly.

Checks per cycle, on the results of :func:`arr_coc_stream.stream` (default ``latest_frame`` pacing):
    - one result with ``gap > 0`` and ``reset``, its gap <= ``--max-gap`` (the outage, the backoff's wait and the
      reconnection: the issue's budget is 4 s for a 3 s outage); also printed: when, after the kill, the first
      frame back reached the consumer's side (the gap is stream time: a reconnection's first frames are a backlog
      of the last ~0.2 s, see ``LiveSource._arrivals``);
    - frame numbers strictly increasing (nothing duplicated), and every index step equal to the frame-number step
      (every frame not delivered is counted in ``dropped``: nothing lost unaccounted), except across the gap,
      where ``dropped`` is estimated from the wall clock and may differ by ``--tolerance`` frames.

Usage:
    python scripts/rtsp_outages.py [--cycles 10] [--outage 3] [--max-gap 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import arr_coc_stream as acs  # noqa: E402
from arr_coc_stream.sources import Frame, StreamSource  # noqa: E402
from tests.test_live import WORK, RtspServer, Tap, encode_clip  # noqa: E402


class ArrivalTap(Tap):
    """:class:`Tap`, also noting when each frame reached the consumer's side (``Frame.received``)."""

    def __iter__(self) -> Iterator[Frame]:
        for frame in super().__iter__():
            self.received[frame.index] = frame.received
            yield frame


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=10, help="outages in a row (default 10)")
    p.add_argument("--outage", type=float, default=3.0, help="seconds the server stays dead (default 3)")
    p.add_argument("--max-gap", type=float, default=4.0, help="largest gap allowed, seconds (default 4)")
    p.add_argument("--run", type=int, default=40, help="results between outages (default 40)")
    p.add_argument("--tolerance", type=int, default=3, help="frames the gap's loss estimate may be off (default 3)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = RtspServer(encode_clip(Path(tmp)), Path(tmp))
        srv.start()
        outages: list[float] = []  # kill -> the restarted server is ready, seconds
        kills: list[float] = []  # monotonic time of each kill
        restarter: threading.Thread | None = None

        def outage() -> None:
            t0 = time.monotonic()
            kills.append(t0)
            srv.stop()  # SIGKILL: a crash, not a goodbye
            time.sleep(args.outage)
            srv.start()  # same port, same epoch: the frame numbers go on
            outages.append(time.monotonic() - t0)

        tap = ArrivalTap(StreamSource(srv.url(), size=WORK), srv)
        tap.received = {}
        results: list[acs.FrameResult] = []
        try:
            with acs.stream(tap, "red") as stream:
                since = 0  # results since the last gap (or the start)
                for r in stream:
                    results.append(r)
                    since = 0 if r.gap > 0 else since + 1
                    done = sum(x.gap > 0 for x in results)
                    if since == args.run and (restarter is None or not restarter.is_alive()):
                        if done == args.cycles:
                            break
                        restarter = threading.Thread(target=outage)
                        restarter.start()
        finally:
            if restarter is not None:
                restarter.join()
            srv.stop()
    numbers = [tap.seen[r.index][0] for r in results]
    ok = all(b > a for a, b in zip(numbers, numbers[1:]))
    print(f"{len(results)} results, frame numbers {numbers[0]}..{numbers[-1]}, strictly increasing: {ok}")
    gaps = []
    for i in range(1, len(results)):
        r, before = results[i], results[i - 1]
        step_index, step_number = r.index - before.index, numbers[i] - numbers[i - 1]
        if r.gap > 0:
            gaps.append(r.gap)
            fine = r.reset and r.gap <= args.max_gap and abs(step_index - step_number) <= args.tolerance
            back = tap.received[r.index] - kills[len(gaps) - 1]
            print(
                f"gap {len(gaps):2d}: {r.gap:.2f} s of stream (outage {outages[len(gaps) - 1]:.2f} s, a frame "
                f"back {back:.2f} s after the kill), {step_index - 1} frames counted lost, {step_number - 1} by "
                f"the frame numbers{'' if fine else '  <-- FAIL'}"
            )
            ok = ok and fine
        elif step_index != step_number:
            print(f"result {i}: index step {step_index} but frame-number step {step_number}  <-- FAIL")
            ok = False
    ok = ok and len(gaps) == args.cycles
    print(
        f"{len(gaps)} gaps of {args.cycles}: max {max(gaps):.2f} s, mean {sum(gaps) / len(gaps):.2f} s "
        f"(limit {args.max_gap:g} s); outages max {max(outages):.2f} s: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
