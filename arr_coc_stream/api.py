"""The generator core (:func:`stream`) and its eager wrapper (:func:`run`).

:func:`stream` checks its options at once (before anything is opened), and returns a :class:`Stream`: an iterator
of results that is also a context manager. It owns its source, a :class:`Source` given to it included: the
source and its threads are closed and joined, and every output closed, however the stream ends (exhausted, the
loop broken out of, :meth:`Stream.close`, an error, garbage collection). A source that ends early (a truncated
file) ends the stream with a :class:`~arr_coc_stream.errors.SourceWarning` naming the last good frame, and the
stream, the list :func:`run` returns and the JSONL's ``end`` record say it is incomplete.
"""

from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import Engine
from .errors import ConfigError, MissingExtraError, OutputError, SourceWarning
from .result import FrameResult
from .sinks import JsonlSink, Sink
from .sources import Source, open_source

SourceLike = str | os.PathLike[str] | int | Source | Iterable[Any]
STOPPED = "stopped before the end of the source"  # the end record's reason when the consumer closed the stream


@dataclass
class _Status:
    """What the generator tells its :class:`Stream` (a separate object: a generator holding its own wrapper would
    be a reference cycle, and a cycle is collected late, its source and threads with it)."""

    busy: bool = False
    complete: bool | None = None
    reason: str | None = None


class Stream(Iterator[FrameResult]):
    """The results of :func:`stream`, one per frame: an iterator and a context manager.

    Attributes:
        busy: a frame is being processed (taken from the source, not yet yielded): a signal handler may let it
            finish (the CLI does) rather than interrupt it.
        complete: None while running; at the end True when the source was read to its end or ``max_frames``
            reached, False when the source ended early (:attr:`reason` says why, e.g. a truncated file), the
            stream was closed before its end, or an error ended it.
        reason: why the stream is incomplete; None when complete.
    """

    def __init__(self, frames: Generator[FrameResult, None, None], status: _Status) -> None:
        self._frames, self._status = frames, status

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> FrameResult:
        return next(self._frames)

    def close(self) -> None:
        """Stop: close the outputs and the source, join its threads; safe to call again."""
        self._frames.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def busy(self) -> bool:
        return self._status.busy

    @property
    def complete(self) -> bool | None:
        return self._status.complete

    @property
    def reason(self) -> str | None:
        return self._status.reason


class Results(list[FrameResult]):
    """The list :func:`run` returns, with the stream's :attr:`Stream.complete` and :attr:`Stream.reason`."""

    complete: bool | None = None
    reason: str | None = None


def stream(
    source: SourceLike,
    query: str | None = None,
    *,
    jsonl: str | os.PathLike[str] | None = None,
    overlay: str | os.PathLike[str] | None = None,
    overlay_scale: float = 1.0,
    plot: str | os.PathLike[str] | None = None,
    callbacks: Iterable[Callable[[FrameResult], None]] = (),
    max_frames: int | None = None,
    progress: bool = False,
    backend: str = "torch",
    model: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Stream:
    """Yield a :class:`FrameResult` per frame of ``source`` as it is processed.

    The options below are checked here, at the call; the engine is built, the source opened and the outputs
    opened (in that order, so a rejected configuration or source leaves no output file) on the first ``next()``.

    Args:
        source: a video file path, a camera index or ``/dev/`` path, an ``rtsp://`` / ``http(s)://`` /
            ``tcp://`` URL (live sources: :mod:`arr_coc_stream.sources`), a :class:`Source` (closed by the
            stream when it ends), or an iterable of HxWx3 uint8 RGB frames. A still image is refused.
        query: the text query; None for query-free relevance.
        jsonl: write every result to this JSONL file, flushed per frame, then an ``end`` record.
        overlay: write the overlay video (:func:`arr_coc_stream.viz.draw_overlay` on every frame) to this
            ``.mp4`` / ``.m4v`` / ``.mov`` file, fragmented H.264 at the source's frame rate (playable up to its
            last fragment if the process is killed); the source then also decodes full-resolution frames.
        overlay_scale: size of the overlay video relative to the source, in (0, 4].
        plot: write the timeline plot (:func:`arr_coc_stream.viz.plot_timeline`) here when the stream ends
            (needs matplotlib: the ``plot`` extra).
        callbacks: called with each result, on the caller's thread, after it is written.
        max_frames: stop after this many frames (>= 1).
        progress: show a progress bar (tqdm) on stderr.
        backend: ``"torch"`` (default), ``"onnxruntime"`` or ``"tensorrt"`` (see :class:`Engine`).
        model: the exported ``.onnx`` / built ``.engine`` file for the onnxruntime / tensorrt backends. It
            defines the configuration: an option here that contradicts it raises :class:`ConfigError`.
        **options: :class:`EngineConfig` fields (``grid``, ``k``, ``cell_px``, ``device``...).

    Returns:
        A :class:`Stream` of results; use it in a ``with`` block, or break out of the loop: either closes it.

    Raises:
        ConfigError: an option out of range, an output path that is a folder, the source itself or another
            output. MissingExtraError: ``plot`` without matplotlib.

    Examples:
        >>> import arr_coc_stream
        >>> from arr_coc_stream.synth import moving_object
        >>> clip = moving_object(n_frames=5)
        >>> with arr_coc_stream.stream(clip.frames, query="red", k=64) as results:
        ...     [r.index for r in results]
        [0, 1, 2, 3, 4]
    """
    callbacks = list(callbacks)
    _check_options(
        source,
        jsonl=jsonl,
        overlay=overlay,
        overlay_scale=overlay_scale,
        plot=plot,
        callbacks=callbacks,
        max_frames=max_frames,
    )
    status = _Status()
    frames = _frames(
        source,
        query,
        status,
        jsonl=jsonl,
        overlay=overlay,
        overlay_scale=overlay_scale,
        plot=plot,
        callbacks=callbacks,
        max_frames=max_frames,
        progress=progress,
        backend=backend,
        model=model,
        options=options,
    )
    return Stream(frames, status)


def _frames(
    source: SourceLike,
    query: str | None,
    status: _Status,
    *,
    jsonl: str | os.PathLike[str] | None,
    overlay: str | os.PathLike[str] | None,
    overlay_scale: float,
    plot: str | os.PathLike[str] | None,
    callbacks: list[Callable[[FrameResult], None]],
    max_frames: int | None,
    progress: bool,
    backend: str,
    model: str | os.PathLike[str] | None,
    options: dict[str, Any],
) -> Generator[FrameResult, None, None]:
    """The stream's generator: engine, source, outputs, then a result per frame (see :func:`stream`)."""
    try:
        engine = Engine(query=query, backend=backend, model=model, **options)
        config = engine.config
        src = open_source(
            source, size=engine.input_size if config.input_mode == "work" else None, keep_full=overlay is not None
        )
    except BaseException:
        if isinstance(source, Source):  # the stream owns the source it was given, also when it never starts
            source.close()
        raise
    sinks: list[Sink] = []
    writer: JsonlSink | None = None
    bar = None
    reason: str | None  # why the stream ended early; None when it is complete
    complete, reason = False, STOPPED  # what a consumer that stops early (GeneratorExit at the yield) leaves
    failed_output = False
    try:
        if progress:
            from tqdm import tqdm

            total = getattr(getattr(src, "info", None), "frames", None)
            bar = tqdm(
                total=min(total, max_frames) if total and max_frames else total or max_frames,
                unit="frame",
                desc="arr-coc-stream",
            )
        info = _info_dict(src)
        if jsonl is not None:
            writer = JsonlSink(jsonl, {**engine.header(), "source": info})
            sinks.append(writer)
        if overlay is not None or plot is not None:
            from .viz import OverlaySink, TimelineSink  # the drawing code loads only when asked for

            if overlay is not None:
                sinks.append(OverlaySink(overlay, fps=info.get("fps"), scale=overlay_scale, query=engine.query.text))
            if plot is not None:
                sinks.append(
                    TimelineSink(
                        plot,
                        title=_plot_title(info, engine.query.text),
                        cut_threshold=config.cut_threshold,
                        budget_cap=config.max_total_budget,
                    )
                )
        frames = iter(src)
        while True:
            if max_frames is not None and engine.frames_processed >= max_frames:
                complete, reason = True, None
                break
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                reason = getattr(src, "incomplete", None)
                complete = reason is None
                if reason is not None:
                    warnings.warn(reason, SourceWarning, stacklevel=3)  # 3: the caller's loop, past Stream
                break
            status.busy = True
            decode_ms = 1000.0 * (time.perf_counter() - t0)
            result = engine.process(
                frame.rgb, frame.time, index=frame.index, source_size=frame.source_size, reset=frame.reset
            )
            result.timings["decode"] = decode_ms
            result.gap, result.dropped = frame.gap, frame.dropped
            for sink in sinks:  # the JSONL sink first: a frame is on disk before anything slower runs
                sink.write(result, frame)
            for cb in callbacks:
                cb(result)
            if bar is not None:
                bar.update(1)
            status.busy = False
            yield result
    except GeneratorExit:
        raise
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        failed_output = isinstance(e, OutputError)
        raise
    finally:
        status.busy, status.complete, status.reason = False, complete, reason
        if bar is not None:
            bar.close()
        try:
            if writer is not None and not failed_output:  # a file that failed a write would fail this one too
                writer.end(complete, reason)
        finally:
            try:
                _close_all(sinks)
            finally:
                src.close()


def run(source: SourceLike, query: str | None = None, **options: Any) -> Results:
    """Process a whole source and return every frame's result (see :func:`stream` for the arguments).

    Returns:
        A list of results, with ``complete`` and ``reason`` as :class:`Stream` has them (``complete`` is False
        when the source ended early, e.g. a truncated file).

    Examples:
        >>> import arr_coc_stream
        >>> from arr_coc_stream.synth import moving_object
        >>> results = arr_coc_stream.run(moving_object(n_frames=3).frames, query="red")
        >>> len(results), results[0].relevance.shape, results.complete
        (3, (32, 32), True)
    """
    with stream(source, query, **options) as frames:
        results = Results(frames)
    results.complete, results.reason = frames.complete, frames.reason
    return results


def _check_options(
    source: Any, *, jsonl: Any, overlay: Any, overlay_scale: Any, plot: Any, callbacks: list[Any], max_frames: Any
) -> None:
    """Raise before anything is opened: :class:`ConfigError` naming the option, :class:`MissingExtraError`."""
    if (
        isinstance(overlay_scale, bool)
        or not isinstance(overlay_scale, numbers.Real)
        # the ignore: typeshed's numbers.Real declares no comparison with a float (at run time it has one)
        or not (math.isfinite(overlay_scale) and 0.0 < overlay_scale <= 4.0)  # type: ignore[operator]
    ):
        raise ConfigError(f"overlay_scale must be a number in (0, 4], got {overlay_scale!r}")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral) or max_frames < 1
    ):
        raise ConfigError(f"max_frames must be an int >= 1 or None, got {max_frames!r}")
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise ConfigError(f"callbacks[{i}] is not callable: {cb!r}")
    outputs = {
        name: path for name, path in (("jsonl", jsonl), ("overlay", overlay), ("plot", plot)) if path is not None
    }
    seen: dict[Path, str] = {}
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        seen[Path(source).resolve()] = "the source"
    for name, path in outputs.items():
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"{name} must be a path, got {path!r} ({type(path).__name__})")
        resolved = Path(path).resolve()
        if resolved.is_dir():
            raise ConfigError(f"{name} {os.fspath(path)!r} is a folder, not a file")
        if resolved in seen:  # writing it would destroy what was there: the input video or another output
            raise ConfigError(f"{name} {os.fspath(path)!r} is also {seen[resolved]}")
        seen[resolved] = f"the {name} output"
    if overlay is not None:
        from .viz import OVERLAY_SUFFIXES

        if Path(overlay).suffix.lower() not in OVERLAY_SUFFIXES:
            raise ConfigError(
                f"overlay {os.fspath(overlay)!r}: the overlay is a fragmented MP4, name it "
                f"{' / '.join(OVERLAY_SUFFIXES)}"
            )
    if plot is not None:
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError as e:
            raise MissingExtraError("the timeline plot (plot=...)", "plot") from e
        kinds = FigureCanvasBase.get_supported_filetypes()
        if Path(plot).suffix.lower().lstrip(".") not in kinds:
            raise ConfigError(f"plot {os.fspath(plot)!r}: matplotlib writes {', '.join('.' + k for k in kinds)}")


def _close_all(sinks: list[Sink]) -> None:
    """Close every sink even when one fails; re-raise the first failure."""
    error: BaseException | None = None
    for sink in sinks:
        try:
            sink.close()
        except BaseException as e:
            error = error or e
    if error is not None:
        raise error


def _plot_title(info: dict[str, Any], query: str | None) -> str:
    name = os.path.basename(str(info.get("uri", ""))) or "frames"
    return f"{name}, query {query!r}" if query else name


def _info_dict(src: Source) -> dict[str, Any]:
    info = getattr(src, "info", None)
    if info is None:
        return {}
    return {
        k: getattr(info, k) for k in ("uri", "width", "height", "fps", "frames", "codec", "live") if hasattr(info, k)
    }
