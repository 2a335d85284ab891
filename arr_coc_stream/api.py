"""The generator core (:func:`stream`) and its eager wrapper (:func:`run`)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Iterator

from .engine import Engine
from .result import FrameResult
from .sinks import JsonlSink, Sink
from .sources import Source, open_source

SourceLike = str | os.PathLike[str] | int | Source | Iterable[Any]


def stream(source: SourceLike, query: str | None = None, *, jsonl: str | os.PathLike[str] | None = None,
           overlay: str | os.PathLike[str] | None = None, overlay_scale: float = 1.0,
           plot: str | os.PathLike[str] | None = None,
           callbacks: Iterable[Callable[[FrameResult], None]] = (), max_frames: int | None = None,
           progress: bool = False, backend: str = "torch", model: str | os.PathLike[str] | None = None,
           **options: Any) -> Iterator[FrameResult]:
    """Yield a :class:`FrameResult` per frame of ``source`` as it is processed.

    Args:
        source: a video file path, a camera index or ``/dev/`` path, an ``rtsp://`` / ``http(s)://`` /
            ``tcp://`` URL (live sources: :mod:`arr_coc_stream.sources`), a :class:`Source`, or an iterable of
            HxWx3 uint8 RGB frames.
        query: the text query; None for query-free relevance.
        jsonl: write every result to this JSONL file, flushed per frame.
        overlay: write the overlay video (:func:`arr_coc_stream.viz.draw_overlay` on every frame) to this file,
            H.264 at the source's frame rate; the source then also decodes full-resolution frames.
        overlay_scale: size of the overlay video relative to the source.
        plot: write the timeline plot (:func:`arr_coc_stream.viz.plot_timeline`) here when the stream ends
            (needs matplotlib: the ``plot`` extra).
        callbacks: called with each result, on the caller's thread, after it is written.
        max_frames: stop after this many frames.
        progress: show a progress bar (tqdm) on stderr.
        backend: ``"torch"`` (default), ``"onnxruntime"`` or ``"tensorrt"`` (see :class:`Engine`).
        model: the exported ``.onnx`` / built ``.engine`` file for the onnxruntime / tensorrt backends. It
            defines the configuration: an option here that contradicts it raises :class:`ConfigError`.
        **options: :class:`EngineConfig` fields (``grid``, ``k``, ``cell_px``, ``device``...).

    Example:
        >>> import arr_coc_stream
        >>> from arr_coc_stream.synth import moving_object
        >>> clip = moving_object(n_frames=5)
        >>> [r.index for r in arr_coc_stream.stream(clip.frames, query="red", k=64)]
        [0, 1, 2, 3, 4]
    """
    engine = Engine(query=query, backend=backend, model=model, **options)
    config = engine.config
    callbacks = list(callbacks)
    src = open_source(source, size=engine.input_size if config.input_mode == "work" else None,
                      keep_full=overlay is not None)
    sinks: list[Sink] = []
    bar = None
    try:
        if progress:
            from tqdm import tqdm

            total = getattr(getattr(src, "info", None), "frames", None)
            bar = tqdm(total=min(total, max_frames) if total and max_frames else total or max_frames,
                       unit="frame", desc="arr-coc-stream")
        info = _info_dict(src)
        if jsonl is not None:
            sinks.append(JsonlSink(jsonl, {**engine.header(), "source": info}))
        if overlay is not None or plot is not None:
            from .viz import OverlaySink, TimelineSink  # the drawing code loads only when asked for

            if overlay is not None:
                sinks.append(OverlaySink(overlay, fps=info.get("fps"), scale=overlay_scale, query=engine.query.text))
            if plot is not None:
                sinks.append(TimelineSink(plot, title=_plot_title(info, engine.query.text),
                                          cut_threshold=config.cut_threshold, budget_cap=config.max_total_budget))
        frames = iter(src)
        while max_frames is None or engine.frames_processed < max_frames:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            decode_ms = 1000.0 * (time.perf_counter() - t0)
            result = engine.process(frame.rgb, frame.time, index=frame.index, source_size=frame.source_size,
                                    reset=frame.reset)
            result.timings["decode"] = decode_ms
            result.gap, result.dropped = frame.gap, frame.dropped
            for sink in sinks:  # the JSONL sink first: a frame is on disk before anything slower runs
                sink.write(result, frame)
            for cb in callbacks:
                cb(result)
            if bar is not None:
                bar.update(1)
            yield result
    finally:
        if bar is not None:
            bar.close()
        try:
            _close_all(sinks)
        finally:
            src.close()


def run(source: SourceLike, query: str | None = None, **options: Any) -> list[FrameResult]:
    """Process a whole source and return every frame's result (see :func:`stream` for the arguments).

    Example:
        >>> import arr_coc_stream
        >>> from arr_coc_stream.synth import moving_object
        >>> results = arr_coc_stream.run(moving_object(n_frames=3).frames, query="red")
        >>> len(results), results[0].relevance.shape
        (3, (32, 32))
    """
    return list(stream(source, query, **options))


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
    return {k: getattr(info, k) for k in ("uri", "width", "height", "fps", "frames", "codec", "live")
            if hasattr(info, k)}
