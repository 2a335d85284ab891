"""Typed errors of arr_coc_stream.

Every error subclasses :class:`ArrCocError` and also a standard type, so ``except ValueError`` or
``except OSError`` in user code keeps working. Messages name the offending input. :class:`SourceWarning` is
the one warning: a source that ended early.
"""

from __future__ import annotations


class ArrCocError(Exception):
    """Base of every error raised by arr_coc_stream."""


class SourceError(ArrCocError, OSError):
    """A video source cannot be opened or read (missing file, not a video, no frames, unreachable URL)."""


class ConfigError(ArrCocError, ValueError):
    """A configuration value is out of range or inconsistent (e.g. ``k`` larger than the grid)."""


class QueryError(ArrCocError, ValueError):
    """A query cannot be used (empty string, unsupported encoder)."""


class ModelError(ArrCocError, ValueError):
    """A model file is missing or does not match the configuration."""


class InputError(ArrCocError, ValueError):
    """A value given to the engine per frame is unusable (a frame of the wrong shape or size, a non-finite time)."""


class InputTypeError(InputError, TypeError):
    """A value given to the engine per frame has the wrong type (a frame of the wrong dtype, a time as a string).

    Also a :class:`TypeError`, and an :class:`InputError` (so a :class:`ValueError`) like every bad input.
    """


class OutputError(ArrCocError, OSError):
    """An output (JSONL, overlay video, timeline plot) cannot be opened or written."""


class MissingExtraError(ArrCocError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it.

    Attributes:
        extra: the ``pip install 'arr_coc_stream[<extra>]'`` name.
    """

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the {extra!r} extra: pip install 'arr_coc_stream[{extra}]'")
        self.extra = extra


class SourceWarning(UserWarning):
    """A source ended early (a truncated or damaged file): the frames before the damage were processed."""
