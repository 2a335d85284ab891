"""A loopback RTSP server for the live-source tests: a looping pre-encoded H.264 clip, published in real time.

Runs under the SYSTEM python (``/usr/bin/python3``) with Debian's GStreamer RTSP server bindings
(``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``, ``gstreamer1.0-plugins-base``/``-good``), never the venv.

It behaves like a camera: frame ``n`` is due at ``epoch + n / fps`` (``epoch`` on the system-wide
``time.monotonic()`` clock) whether or not anyone watches, so a server restarted with the same ``--epoch``
carries on with the frame numbers a real camera would have reached, and the frames published while it was
down are lost. Clip frame ``n % len(clip)`` is sent as frame ``n``; the test clip carries that clip index in
its pixels. A newly prepared media (the first client after a start) begins at a keyframe so the client decodes
from its first frame.

Mount points on ``rtsp://127.0.0.1:PORT``:
    /stream  the clip: ``appsrc`` (H.264 byte-stream access units) -> ``rtph264pay``, shared by all clients.
    /audio   an audio-only stream (A-law test tone), for the "no video track" error.

Each frame pushed into the pipeline appends ``"n clip_index monotonic_seconds"`` to ``--log`` (one line per
frame, flushed): the newest published frame at any moment is the log's last whole line.

Usage:
    /usr/bin/python3 tests/rtsp_server.py --clip clip.h264 --index clip.json --log publish.log [--port 0]
Prints ``READY <port>`` on stdout once it listens; SIGTERM, SIGINT or the end of its standard input stops it
(a test gives it a pipe, so the server never outlives a test run that was killed).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from fractions import Fraction

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

VIDEO_LAUNCH = (
    "( appsrc name=src is-live=true format=time do-timestamp=true "
    "caps=video/x-h264,stream-format=byte-stream,alignment=au "
    "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)
AUDIO_LAUNCH = (
    "( audiotestsrc is-live=true ! audioconvert ! audioresample ! audio/x-raw,rate=8000,channels=1 "
    "! alawenc ! rtppcmapay name=pay0 pt=8 )"
)


class Publisher:
    """Pushes clip frame ``n % len(clip)`` into the current media's appsrc at ``epoch + n / fps``."""

    def __init__(self, data: bytes, frames: list[list[int]], fps: Fraction, epoch: float, log_path: str) -> None:
        self.units = [data[off : off + size] for off, size, _ in frames]  # one access unit per frame
        self.keys = [bool(key) for _, _, key in frames]
        self.fps, self.epoch = fps, epoch
        self.log = open(log_path, "a", buffering=1)  # line-buffered: each line reaches the file as it is written
        self.lock = threading.Lock()
        self.appsrc: Gst.Element | None = None
        self.fresh = False  # the current media has not had a frame yet: start it at a keyframe

    def on_media_configure(self, factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name("src")
        with self.lock:
            self.appsrc, self.fresh = src, True
        media.connect("unprepared", self.on_unprepared, src)

    def on_unprepared(self, media: GstRtspServer.RTSPMedia, src: Gst.Element) -> None:
        with self.lock:
            if self.appsrc is src:
                self.appsrc = None

    def run(self) -> None:
        n = max(0, int((time.monotonic() - self.epoch) * self.fps) + 1)
        while True:
            delay = self.epoch + float(n / self.fps) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # frames are never skipped when late: a skipped P-frame would corrupt every frame up to the next IDR
            c = n % len(self.units)
            with self.lock:
                src = self.appsrc
                if src is not None and self.fresh and not self.keys[c]:
                    src = None
                elif src is not None:
                    self.fresh = False
            if src is not None:
                ret = src.emit("push-buffer", Gst.Buffer.new_wrapped(self.units[c]))
                if ret == Gst.FlowReturn.OK:
                    self.log.write(f"{n} {c} {time.monotonic():.6f}\n")
            n += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", required=True, help="H.264 Annex-B file, one access unit per frame")
    p.add_argument("--index", required=True, help='JSON {"fps": "30000/1001", "frames": [[offset, size, key], ...]}')
    p.add_argument("--log", required=True, help="append 'n clip_index monotonic_s' per published frame here")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    p.add_argument("--epoch", type=float, default=None, help="monotonic time of frame 0 (default: now)")
    args = p.parse_args()

    Gst.init(None)
    with open(args.index) as f:
        index = json.load(f)
    with open(args.clip, "rb") as f:
        data = f.read()
    epoch = time.monotonic() if args.epoch is None else args.epoch
    pub = Publisher(data, index["frames"], Fraction(index["fps"]), epoch, args.log)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    video = GstRtspServer.RTSPMediaFactory()
    video.set_launch(VIDEO_LAUNCH)
    video.set_shared(True)
    video.connect("media-configure", pub.on_media_configure)
    audio = GstRtspServer.RTSPMediaFactory()
    audio.set_launch(AUDIO_LAUNCH)
    audio.set_shared(True)
    mounts = server.get_mount_points()
    mounts.add_factory("/stream", video)
    mounts.add_factory("/audio", audio)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)

    def watch_parent() -> None:
        sys.stdin.read()  # returns at end of input: the process that started us is gone
        GLib.idle_add(loop.quit)

    threading.Thread(target=watch_parent, name="stdin-watch", daemon=True).start()
    threading.Thread(target=pub.run, name="publisher", daemon=True).start()
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
