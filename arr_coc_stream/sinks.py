"""Sinks: where results go as they are produced (DESIGN.md section 9).

A sink is anything with ``write(result, frame)`` and ``close()``; callbacks are plain callables. The JSONL sink
writes a header object, then one object per frame, each line in one unbuffered ``write`` system call, so a run
killed midway leaves whole lines for every processed frame, and at a clean end an ``end`` object saying whether
the source was read to its end. Every line is strict JSON: a NaN or infinite number is written as ``null``. The
overlay video and timeline sinks live in :mod:`arr_coc_stream.viz`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ._version import __version__
from .errors import OutputError, SourceError
from .result import FrameResult

if TYPE_CHECKING:
    import numpy as np

    from .sources.base import Frame

SCHEMA_VERSION = 1


class Sink(Protocol):
    def write(self, result: FrameResult, frame: Frame | np.ndarray) -> None: ...  # the frame of the result

    def close(self) -> None: ...


class JsonlSink:
    """Write results to a JSON Lines file.

    Args:
        path: output file (parent folders are created).
        header: the header object's fields (config, query, source info); ``schema_version`` and ``version``
            are added.

    Raises:
        OutputError: the file cannot be created or written (the path is a folder, no permission, disk full).
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.frames = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("wb", buffering=0)  # unbuffered: each line is one write() system call
        except OSError as e:
            raise OutputError(f"cannot write the JSONL file {self.path}: {e}") from e
        self._line({"type": "header", "schema_version": SCHEMA_VERSION, "version": __version__, **header})

    def write(self, result: FrameResult, frame: Frame | np.ndarray | None = None) -> None:
        self._line({"type": "frame", **result.to_dict()})
        self.frames += 1

    def end(self, complete: bool, reason: str | None = None) -> None:
        """Write the ``end`` object: frames written, whether the source was read to its end, and why not."""
        self._line({"type": "end", "frames": self.frames, "complete": complete, "reason": reason})

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, obj: dict[str, Any]) -> None:
        try:
            text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
        except ValueError:  # NaN or inf somewhere: bare NaN tokens are not JSON, null is
            text = json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False)
        data = memoryview((text + "\n").encode("utf-8"))
        try:
            while data:  # a raw write may be short (full disk, signal); finish the line
                data = data[self._file.write(data) :]
        except OSError as e:
            raise OutputError(f"cannot write the JSONL file {self.path}: {e}") from e


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_jsonl(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[FrameResult]]:
    """Read a JSONL file written by :class:`JsonlSink`.

    A last line cut short (the writer was killed mid-write) is ignored; every whole line is returned. The ``end``
    object of a run that ended (not killed) is in ``header["end"]``: ``{"frames", "complete", "reason"}``, with
    ``complete`` false when the source ended early (a truncated file); a ``null`` number reads back as NaN.

    Returns:
        (header, results) with results as :class:`FrameResult` objects.
    """
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"no such JSONL file: {p}")
    header: dict[str, Any] = {}
    results: list[FrameResult] = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.endswith("\n"):
                break
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise SourceError(f"{p}: line {n + 1} is not JSON ({e})") from e
            kind = obj.pop("type", None)
            if kind == "header":
                header = obj
            elif kind == "frame":
                results.append(FrameResult.from_dict(obj))
            elif kind == "end":
                header["end"] = obj
            else:
                raise SourceError(f"{p}: line {n + 1} is neither a header, a frame nor an end record")
    return header, results
