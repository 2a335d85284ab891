"""The generator core (:func:`stream`) and its eager wrapper (:func:`run`)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Iterator

from .config import EngineConfig
from .engine import Engine
from .result import FrameResult
from .sinks import JsonlSink
from .sources import Source, open_source

SourceLike = str | os.PathLike[str] | int | Source | Iterable[Any]


def stream(source: SourceLike, query: str | None = None, *, jsonl: str | os.PathLike[str] | None = None,
           callbacks: Iterable[Callable[[FrameResult], None]] = (), max_frames: int | None = None,
           progress: bool = False, **options: Any) -> Iterator[FrameResult]:
    """Yield a :class:`FrameResult` per frame of ``source`` as it is processed.

    Args:
        source: a video file path, a :class:`Source`, or an iterable of HxWx3 uint8 RGB frames.
        query: the text query; None for query-free relevance.
        jsonl: write every result to this JSONL file, flushed per frame.
        callbacks: called with each result, on the caller's thread, after it is written.
        max_frames: stop after this many frames.
        progress: show a progress bar (tqdm) on stderr.
        **options: :class:`EngineConfig` fields (``grid``, ``k``, ``cell_px``, ``device``...).

    Example:
        >>> import arr_coc_stream
        >>> from arr_coc_stream.synth import moving_object
        >>> clip = moving_object(n_frames=5)
        >>> [r.index for r in arr_coc_stream.stream(clip.frames, query="red", k=64)]
        [0, 1, 2, 3, 4]
    """
    config = EngineConfig.from_options(**options)
    engine = Engine(config, query=query)
    callbacks = list(callbacks)
    src = open_source(source, size=config.work_size if config.input_mode == "work" else None)
    sink = None
    bar = None
    try:
        if progress:
            from tqdm import tqdm

            total = getattr(getattr(src, "info", None), "frames", None)
            bar = tqdm(total=min(total, max_frames) if total and max_frames else total or max_frames,
                       unit="frame", desc="arr-coc-stream")
        if jsonl is not None:
            sink = JsonlSink(jsonl, {**engine.header(), "source": _info_dict(src)})
        frames = iter(src)
        while max_frames is None or engine.frames_processed < max_frames:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            decode_ms = 1000.0 * (time.perf_counter() - t0)
            result = engine.process(frame.rgb, frame.time, index=frame.index, source_size=frame.source_size)
            result.timings["decode"] = decode_ms
            if sink is not None:
                sink.write(result)
            for cb in callbacks:
                cb(result)
            if bar is not None:
                bar.update(1)
            yield result
    finally:
        if bar is not None:
            bar.close()
        if sink is not None:
            sink.close()
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


def _info_dict(src: Source) -> dict[str, Any]:
    info = getattr(src, "info", None)
    if info is None:
        return {}
    return {k: getattr(info, k) for k in ("uri", "width", "height", "fps", "frames", "codec", "live")
            if hasattr(info, k)}
