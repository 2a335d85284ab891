"""The microscope: a local web page over a live stream (``arr-coc-stream serve``).

:class:`Microscope` runs the engine on one background thread, the only one that touches the :class:`Engine` and
the source. After each frame it publishes a JPEG (the overlay of :func:`arr_coc_stream.viz.draw_overlay`, or one
texture channel as a heatmap) and a status snapshot (frame, selection, query, fps, a timeline of scene score,
cuts, motion and tokens); HTTP handlers only read those under a lock and post query and channel changes. A query
goes through a queue and is applied between two frames, so it takes effect from the next frame.

:func:`make_app` builds the Starlette application over a :class:`Microscope`: the page (``data/microscope.html``),
``/stream.mjpg`` (``multipart/x-mixed-replace`` JPEGs), ``/frame.jpg``, ``/api/status``, ``/api/query`` and
``/api/channel``. No route takes a path or a file name; request bodies are small JSON objects, checked before use.
:func:`serve` runs it with uvicorn on 127.0.0.1 by default and stops cleanly on SIGINT or SIGTERM (the engine
thread joined, the source closed). Starlette and uvicorn are the ``serve`` extra, imported only here and only
when a server is made.

Examples:
    >>> from arr_coc_stream.serve import ServeConfig, serve
    >>> serve("clip.mp4", "red", ServeConfig(port=8000, loop=True))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import queue
import signal
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from .channels import CHANNELS
from .engine import Engine
from .errors import ArrCocError, ConfigError, MissingExtraError
from .query import QueryWarning
from .result import FrameResult
from .sources import Frame, Source, open_source
from .viz import _heat, _text, draw_overlay

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200  # a query is a few words; a longer text is a mistake or an abuse, refused with a 422
MAX_BODY_BYTES = 4096  # request bodies are one small JSON object
QUERY_WAIT_S = 5.0  # how long POST /api/query waits for the engine thread to apply the query (then: 202)
BOUNDARY = "frame"
TIMELINE_FIELDS = ("index", "time", "scene_score", "cut", "motion", "tokens", "selected")


@dataclass(frozen=True)
class ServeConfig:
    """How the microscope serves a stream.

    Attributes:
        host: address to bind; 127.0.0.1 (this machine only) unless asked otherwise.
        port: TCP port; 0 picks a free one (printed at start).
        loop: a file starts again at its end (the temporal state restarts); otherwise the page says it ended.
        view_width: the image's width in pixels (drawn at this width, aspect kept; up or down from the source).
        jpeg_quality: JPEG quality of the image, 1..100.
        history: frames the timeline keeps.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    loop: bool = False
    view_width: int = 640
    jpeg_quality: int = 80
    history: int = 300

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if not 16 <= self.view_width <= 4096:
            raise ConfigError(f"view_width must be in [16, 4096], got {self.view_width}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.history < 1:
            raise ConfigError(f"history must be at least 1, got {self.history}")


class _TextureTap:
    """Keeps the texture array of the engine's last frame: [1, C, gh, gw], channels as in :data:`CHANNELS`.

    The texture is no graph output, so it is read where the eager torch graph hands it to the knowing stage (a
    forward pre-hook). A compiled graph or an exported one (onnxruntime, TensorRT) runs no Python hooks: there
    :attr:`available` is False and the page offers no channel.
    """

    def __init__(self, engine: Engine) -> None:
        self.latest: torch.Tensor | None = None
        stage = getattr(getattr(engine.runner, "module", None), "knowing", None)
        self.available = engine.backend == "torch" and not engine.config.compile and stage is not None
        self._handle = stage.register_forward_pre_hook(self._keep) if self.available and stage is not None else None

    def _keep(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.latest = args[0]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()


def draw_channel(frame: np.ndarray, values: np.ndarray, name: str) -> np.ndarray:
    """Draw one texture channel as an inferno heatmap over the frame's size, cells kept square-edged.

    Args:
        frame: [H, W, 3] uint8, the size to draw at (its pixels are not shown: the heatmap covers it).
        values: [gh, gw] the channel, in its declared range (:data:`CHANNELS`); scaled to [0, 1] by that range,
            never per frame, so a channel's colours compare across frames.
        name: the channel's registry name.

    Returns:
        [H, W, 3] uint8 RGB.
    """
    channel = CHANNELS[name]
    unit = np.clip((values.astype(np.float32) - channel.low) / (channel.high - channel.low), 0.0, 1.0)
    h, w = frame.shape[:2]
    out = np.ascontiguousarray(_heat(cv2.resize(unit, (w, h), interpolation=cv2.INTER_NEAREST)))
    font = max(0.4, min(h, w) / 720)
    _, bh = _text(out, f"channel {name}  [{channel.low:g}, {channel.high:g}]", (0, 0), font, (255, 255, 255))
    _text(out, channel.meaning, (0, bh), font * 0.8, (255, 255, 255))
    return out


def _display_size(source_size: tuple[int, int], width: int) -> tuple[int, int]:
    """(H, W) to draw at: ``width`` wide, the source's aspect kept."""
    h, w = source_size
    return max(1, round(h * width / w)), width


class Microscope:
    """The engine thread and what it publishes for the page.

    The engine and the first opening of the source happen in the constructor, on the caller's thread, so a bad
    option or an unreadable source is refused before any server starts; from :meth:`start` on, both belong to
    the engine thread.

    Args:
        source: a video path, a camera index or ``/dev/`` path, or an ``rtsp://`` / ``http(s)://`` / ``tcp://``
            URL (as :func:`arr_coc_stream.sources.open_source` takes it).
        query: the first query; None for query-free relevance.
        config: how to serve.
        **options: :class:`~arr_coc_stream.config.EngineConfig` fields.

    Raises:
        ConfigError, SourceError, QueryError: as :class:`Engine` and :func:`open_source`.
    """

    def __init__(self, source: str | int, query: str | None, config: ServeConfig, **options: Any) -> None:
        self.config = config
        self._source_arg = source
        with warnings.catch_warnings(record=True) as caught:  # the first query's warnings go to the page too
            warnings.simplefilter("always", QueryWarning)
            self.engine = Engine(query=query, **options)
        _show_again(caught)
        self._tap = _TextureTap(self.engine)
        self._source: Source | None = self._open()
        self.info = self._source.info
        self._lock = threading.Lock()  # guards everything below that the HTTP handlers read or write
        self._jpeg: bytes | None = None
        self._seq = 0
        self._channel: str | None = None
        self._viewers = 0
        self._query_report: dict[str, Any] = self._query_state(_query_warnings(caught), None)
        self._status: dict[str, Any] = {"state": "starting", "message": "waiting for the first frame"}
        self._controls: queue.Queue[tuple[str | None, Future[dict[str, Any]]]] = queue.Queue()
        self._history: collections.deque[tuple[float, ...]] = collections.deque(maxlen=config.history)
        self._last: tuple[np.ndarray, FrameResult, np.ndarray | None] | None = None
        self._drawn_channel: str | None = None
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arr_coc_stream-serve-engine", daemon=True)

    # ------------------------------------------------------------------------------ read by the HTTP handlers
    @property
    def channels(self) -> list[str]:
        """Registry names of the channels the page may show (none when the graph is not eager torch)."""
        return list(CHANNELS) if self._tap.available else []

    def frame(self) -> tuple[int, bytes | None]:
        """(sequence number, JPEG bytes) of the latest image; the number grows with every new image."""
        with self._lock:
            return self._seq, self._jpeg

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: state, message, source, latest frame, query, channel, fps and timeline."""
        with self._lock:
            return {
                **self._status,
                "query": self._query_report,
                "channel": self._channel,
                "channels": self.channels,
                "viewers": self._viewers,
                "timeline": {"fields": TIMELINE_FIELDS, "rows": list(self._history)},
            }

    def set_channel(self, name: str | None) -> None:
        """Show texture channel ``name`` as a heatmap from the next image, or the overlay for None."""
        with self._lock:
            self._channel = name

    def post_query(self, text: str | None) -> Future[dict[str, Any]]:
        """Queue a query for the engine thread; the future gets the outcome once it is applied (the next frame).

        Returns:
            A future of ``{"text", "terms", "ignored", "warnings", "error"}`` (the query in use after it);
            ``error`` is the head's message when it refused the query (the previous query then stays).
        """
        done: Future[dict[str, Any]] = Future()
        self._controls.put((text, done))
        return done

    def viewer(self, delta: int) -> None:
        """Count an MJPEG viewer in (+1) or out (-1)."""
        with self._lock:
            self._viewers += delta

    # ------------------------------------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the engine thread and close the source; safe to call again.

        The thread notices the stop between frames (within a second). A live source waiting for a frame (a
        camera or stream in an outage) is closed from here to end that wait, since the thread would otherwise
        wait out the source's reconnection timeout; then the thread is given ``timeout_s`` to end.
        """
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        source = self._source  # read once: the engine thread may set it to None meanwhile
        if self._thread.is_alive() and source is not None:
            source.close()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._tap.close()

    @property
    def stopped(self) -> bool:
        """The engine thread has ended and the source is closed."""
        return not self._thread.is_alive() and self._source is None

    # --------------------------------------------------------------------------------- the engine thread
    def _open(self) -> Source:
        return open_source(self._source_arg, size=self.engine.input_size, keep_full=True)

    def _run(self) -> None:
        """The engine thread: apply queued queries, process a frame, publish its image and status; at the end of
        a file start again (``loop``) or wait, still applying queries and redrawing on a channel change."""
        frames: Iterator[Frame] | None = iter(self._source) if self._source is not None else None
        count, pace = 0, _Pacer(self.info.live)
        try:
            while not self.stopping.is_set():
                self._apply_queries()
                if frames is None:
                    self._redraw_if_needed()
                    continue
                frame = next(frames, None)
                if frame is None:
                    frames = self._at_end(count)
                    count, pace = 0, _Pacer(self.info.live)
                    continue
                pace.wait(frame.time, self.stopping)
                result = self.engine.process(
                    frame.rgb, frame.time, index=frame.index, source_size=frame.source_size, reset=frame.reset
                )
                result.gap, result.dropped = frame.gap, frame.dropped
                count += 1
                self._publish(frame, result, pace.tick())
        except Exception as e:  # the page says what ended the stream; the server stays up to show it
            log.error("the stream stopped: %s: %s", type(e).__name__, e)
            self._set_state("error", f"the stream stopped: {type(e).__name__}: {e}")
        finally:
            self._close_source()
            self._fail_queued()

    def _at_end(self, count: int) -> Iterator[Frame] | None:
        """The source ended: the frames of a new pass (``loop``, a file), or None and the page told why."""
        reason = self._source.incomplete if self._source is not None else None
        self._close_source()
        if self.stopping.is_set():  # ended because :meth:`stop` closed it
            return None
        if self.config.loop and not self.info.live and count:
            self._source = self._open()
            self.engine.reset()  # the new pass's times start over: a fresh temporal state, as on a cut
            return iter(self._source)
        what = "the source ended" if reason is None else f"the source ended early: {reason}"
        self._set_state("ended", f"{what} after {count} frames; the last frame stays on the page (Ctrl-C stops)")
        log.info("%s after %d frames", what, count)
        return None

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()

    def _apply_queries(self) -> None:
        """Apply the queued queries in order (the last one wins), each reported to its future."""
        while True:
            try:
                text, done = self._controls.get_nowait()
            except queue.Empty:
                return
            # catch_warnings is process-wide: only the head's encoding runs inside it, so other threads' warnings
            # are rarely caught here; those that are get shown again below, not lost
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", QueryWarning)
                try:
                    self.engine.set_query(text)
                    error = None
                except ArrCocError as e:  # the head refused it: the previous query stays
                    error = str(e)
            _show_again([w for w in caught if not issubclass(w.category, QueryWarning)])
            report = self._query_state(_query_warnings(caught), error)
            with self._lock:
                self._query_report = report
            done.set_result(report)

    def _query_state(self, messages: list[str], error: str | None) -> dict[str, Any]:
        q = self.engine.query
        return {
            "text": q.text,
            "terms": list(q.terms),
            "ignored": list(q.ignored),
            "warnings": messages,
            "error": error,
        }

    def _fail_queued(self) -> None:
        """Answer queries still queued when the thread ends, so no handler waits for them."""
        while True:
            try:
                _, done = self._controls.get_nowait()
            except queue.Empty:
                return
            done.set_result({**self._query_report, "error": "the stream has stopped"})

    def _redraw_if_needed(self) -> None:
        """After the end: redraw the last frame when the page picked another channel, then wait a little."""
        with self._lock:
            channel = self._channel
        if self._last is not None and channel != self._drawn_channel:
            self._encode(*self._last)
        self.stopping.wait(0.05)

    def _publish(self, frame: Frame, result: FrameResult, fps: float) -> None:
        """Draw and encode the frame, then update the status and timeline."""
        full = frame.full if frame.full is not None else frame.rgb
        h, w = _display_size(result.source_size, self.config.view_width)
        view = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA if w < full.shape[1] else cv2.INTER_LINEAR)
        tex = self._tap.latest[0].cpu().numpy() if self._tap.latest is not None else None  # [C, gh, gw]
        self._last = (view, result, tex)
        self._encode(view, result, tex)
        cells = result.selected_cells  # [n, 2] (y, x)
        gh, gw = result.grid
        tokens = result.total_budget
        row = (
            result.index,
            round(result.time, 4),
            round(result.scene_score, 4),
            int(result.cut),
            round(result.motion, 4),
            tokens,
            len(cells),
        )
        frame_status = {
            "index": result.index,
            "time": round(result.time, 4),
            "cut": result.cut,
            "scene_score": round(result.scene_score, 4),
            "motion": round(result.motion, 4),
            "tokens": tokens,
            "selected": len(cells),
            # where the selection is, in [0, 1] of the frame's width and height: what a new query moves
            "centre": [round((cells[:, 1].mean() + 0.5) / gw, 4), round((cells[:, 0].mean() + 0.5) / gh, 4)]
            if len(cells)
            else None,
            "top_cell": [int(v) for v in cells[0]] if len(cells) else None,
            "grid": [gh, gw],
            "dropped": result.dropped,
            "ms": round(result.timings.get("total", 0.0), 1),
        }
        with self._lock:
            self._history.append(row)
            self._status = {
                "state": "running",
                "message": "",
                "source": self._source_status(),
                "frame": frame_status,
                "fps": round(fps, 2),
                "max_tokens": self.engine.config.max_total_budget,
            }

    def _encode(self, view: np.ndarray, result: FrameResult, tex: np.ndarray | None) -> None:
        with self._lock:
            channel = self._channel
        if channel is not None and tex is not None:
            image = draw_channel(view, tex[CHANNELS[channel].index], channel)
        else:
            image = draw_overlay(view, result, query=self.engine.query.text)
        ok, data = cv2.imencode(
            ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        )
        if not ok:
            raise RuntimeError("cv2.imencode could not encode the frame as JPEG")
        with self._lock:
            self._jpeg, self._seq = data.tobytes(), self._seq + 1
        self._drawn_channel = channel

    def _source_status(self) -> dict[str, Any]:
        i = self.info
        return {"uri": i.uri, "width": i.width, "height": i.height, "fps": i.fps, "live": i.live}

    def _set_state(self, state: str, message: str) -> None:
        with self._lock:
            self._status = {**self._status, "state": state, "message": message}


def _query_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The messages of the :class:`QueryWarning` among ``caught``."""
    return [str(w.message) for w in caught if issubclass(w.category, QueryWarning)]


def _show_again(caught: list[warnings.WarningMessage]) -> None:
    """Show recorded warnings as they would have been shown (stderr) had they not been recorded."""
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


class _Pacer:
    """Plays a file at its own speed (its frame times against the wall clock) and measures the processing rate.

    A live source is paced by its producer already, so it never waits here. A file that falls behind (a slow
    engine) is not hurried: the clock is moved, so it plays on at the rate the engine manages.
    """

    def __init__(self, live: bool) -> None:
        self.live = live
        self._origin: float | None = None  # wall time at stream time 0
        self._last: float | None = None
        self._fps = 0.0

    def wait(self, t: float, stop: threading.Event) -> None:
        now = time.monotonic()
        if self.live:
            return
        if self._origin is None or now - (self._origin + t) > 0.5:
            self._origin = now - t
        stop.wait(max(0.0, self._origin + t - now))

    def tick(self) -> float:
        """Count a processed frame; returns frames per second (exponential average over about 10 frames)."""
        now = time.monotonic()
        if self._last is not None and now > self._last:
            rate = 1.0 / (now - self._last)
            self._fps = rate if self._fps == 0.0 else 0.9 * self._fps + 0.1 * rate
        self._last = now
        return self._fps


# ----------------------------------------------------------------------------------------------- the app
def _import_server() -> tuple[Any, Any]:
    """(starlette, uvicorn), or :class:`MissingExtraError` naming the ``serve`` extra."""
    try:
        import starlette.applications
        import uvicorn
    except ImportError as e:
        raise MissingExtraError("arr-coc-stream serve (a web page over the stream)", "serve") from e
    return starlette, uvicorn


def page() -> bytes:
    """The microscope page (``arr_coc_stream/data/microscope.html``): plain HTML and JavaScript, no build step."""
    return resources.files("arr_coc_stream").joinpath("data/microscope.html").read_bytes()


def make_app(microscope: Microscope) -> Starlette:
    """The Starlette application over ``microscope`` (see the module docstring for its routes).

    Raises:
        MissingExtraError: Starlette is not installed (the ``serve`` extra).
    """
    _import_server()
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    html = page()

    async def index(_request: Request) -> Response:
        return Response(html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def status(_request: Request) -> Response:
        return JSONResponse(microscope.status(), headers={"Cache-Control": "no-store"})

    async def frame(_request: Request) -> Response:
        _, jpeg = microscope.frame()
        if jpeg is None:
            return JSONResponse({"error": "no frame yet"}, status_code=503)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def mjpeg(_request: Request) -> Response:
        return StreamingResponse(
            _mjpeg_parts(microscope),
            media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            headers={"Cache-Control": "no-store"},
        )

    async def query(request: Request) -> Response:
        body = await _json_object(request, "query")
        if isinstance(body, Response):
            return body
        text = body["query"]
        if text is not None and not isinstance(text, str):
            return _error(422, f"query must be a string or null, got {type(text).__name__}")
        if text is not None and len(text) > MAX_QUERY_CHARS:
            return _error(422, f"query is {len(text)} characters long; at most {MAX_QUERY_CHARS}")
        text = text.strip() if text is not None else None
        done = microscope.post_query(text or None)  # empty: query-free relevance
        try:
            # shielded: a timeout must not cancel the future the engine thread will still answer
            report = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), QUERY_WAIT_S)
        except asyncio.TimeoutError:
            return JSONResponse({"applied": False, "message": "queued: it applies from the next frame"}, 202)
        if report["error"] is not None:
            return JSONResponse({"applied": False, **report, "message": report["error"]}, 422)
        return JSONResponse({"applied": True, **report, "message": "; ".join(report["warnings"])})

    async def channel(request: Request) -> Response:
        body = await _json_object(request, "channel")
        if isinstance(body, Response):
            return body
        name = body["channel"]
        if name is not None and not isinstance(name, str):
            return _error(422, f"channel must be a channel name or null, got {type(name).__name__}")
        if name is not None and name not in microscope.channels:
            if not microscope.channels:
                return _error(409, "no texture channel to show: they come from the eager torch graph only")
            return _error(422, f"unknown channel {name[:40]!r}; one of {', '.join(microscope.channels)}")
        microscope.set_channel(name)
        return JSONResponse({"channel": name})

    routes = [
        Route("/", index),
        Route("/api/status", status),
        Route("/frame.jpg", frame),
        Route("/stream.mjpg", mjpeg),
        Route("/api/query", query, methods=["POST"]),
        Route("/api/channel", channel, methods=["POST"]),
    ]
    return Starlette(routes=routes)


async def _mjpeg_parts(microscope: Microscope) -> AsyncIterator[bytes]:
    """Each new image as one part of a ``multipart/x-mixed-replace`` body, until the server stops or the client
    goes (Starlette then cancels this generator: the ``finally`` counts the viewer out)."""
    microscope.viewer(+1)
    try:
        seen = -1
        while not microscope.stopping.is_set():
            seq, jpeg = microscope.frame()
            if seq != seen and jpeg is not None:
                seen = seq
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                yield head.encode() + jpeg + b"\r\n"
            await asyncio.sleep(0.02)  # the engine thread cannot wake the event loop; 20 ms is below a frame
    finally:
        microscope.viewer(-1)


async def _json_object(request: Request, key: str) -> dict[str, Any] | Response:
    """The request's JSON object with ``key`` in it, or the 4xx response saying what is wrong with the body."""
    size = 0
    chunks = []
    async for chunk in request.stream():  # read in chunks: a body with no or a false Content-Length stays bounded
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return _error(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        return _error(400, f'the body must be JSON: {{"{key}": ...}}')
    if not isinstance(body, dict) or key not in body:
        return _error(422, f'the body must be a JSON object with a "{key}" field')
    return body


def _error(status_code: int, message: str) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status_code)


# -------------------------------------------------------------------------------------------------- serve
def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), for uvicorn to serve on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop can bind again
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(64)
    return sock


def serve(
    source: str | int,
    query: str | None,
    config: ServeConfig,
    *,
    on_start: Callable[[str], None] | None = None,
    **options: Any,
) -> int:
    """Serve the microscope page over ``source`` until SIGINT or SIGTERM; returns 128 + the signal number.

    Call it from the main thread: Python delivers signals there, and they are what stops the server.

    Args:
        source, query, options: as :class:`Microscope`.
        config: how to serve.
        on_start: called with the page's URL once the server listens (default: print it).

    Raises:
        MissingExtraError: Starlette or uvicorn is not installed (the ``serve`` extra).
        ConfigError, SourceError, QueryError: a bad option or source, before anything listens.
    """
    _import_server()  # MissingExtraError naming the extra
    import uvicorn  # a module (not a value from _import_server): Server subclasses its class

    microscope = Microscope(source, query, config, **options)
    stopped_by: list[int] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            microscope.stopping.set()  # ends the MJPEG streams, so the graceful shutdown does not wait on them
            stopped_by.append(sig)
            super().handle_exit(sig, frame)

    def record(sig: int, _frame: Any) -> None:
        # uvicorn restores the handlers it found and raises the signal again once it has stopped: this one only
        # records it, so the engine thread is joined and the source closed below (the default would kill us)
        stopped_by.append(sig)
        microscope.stopping.set()

    main = threading.current_thread() is threading.main_thread()  # Python sets signal handlers there only
    previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    sock = None
    try:
        sock = bind(config.host, config.port)
        host, port = sock.getsockname()[:2]
        server = Server(
            uvicorn.Config(make_app(microscope), log_level="warning", lifespan="off", timeout_graceful_shutdown=3)
        )
        microscope.start()
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        (on_start or (lambda u: print(f"arr-coc-stream serve: {u} (Ctrl-C stops)", flush=True)))(url)
        if not microscope.stopping.is_set():  # a signal during the start: stop without serving
            server.run(sockets=[sock])
    finally:
        microscope.stop()
        if sock is not None:
            sock.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    done = "engine thread joined, source closed" if microscope.stopped else "the engine thread did not stop in time"
    print(f"arr-coc-stream serve: stopped; {done}", flush=True)
    signum = stopped_by[0] if stopped_by else signal.SIGINT
    return 128 + int(signum)
