"""arr_coc_stream: query-aware, real-time relevance realization on video streams.

For each frame and a text query, decide which regions deserve visual tokens: a relevance map on a cell grid, a
selection of up to K cells, foveal budgets with a level of detail, and scene cuts, carried across frames by an
explicit temporal state.

    >>> import arr_coc_stream
    >>> results = arr_coc_stream.run("video.mp4", query="where is the red car?")  # doctest: +SKIP
"""

from __future__ import annotations

from ._version import __version__
from .api import run, stream
from .channels import CHANNELS
from .config import EngineConfig
from .engine import Engine
from .errors import (
    ArrCocError,
    ConfigError,
    InputError,
    InputTypeError,
    MissingExtraError,
    ModelError,
    OutputError,
    QueryError,
    SourceError,
    SourceWarning,
)
from .export import export_onnx
from .multi import MultiEngine
from .query import QueryWarning
from .result import FrameResult
from .sinks import read_jsonl

__all__ = [
    "CHANNELS",
    "ArrCocError",
    "ConfigError",
    "Engine",
    "EngineConfig",
    "FrameResult",
    "InputError",
    "InputTypeError",
    "MissingExtraError",
    "ModelError",
    "MultiEngine",
    "OutputError",
    "QueryError",
    "QueryWarning",
    "SourceError",
    "SourceWarning",
    "__version__",
    "export_onnx",
    "read_jsonl",
    "run",
    "stream",
]
