"""Typed errors of arr_coc_stream.

Every error subclasses :class:`ArrCocError` and also a standard type, so ``except ValueError`` or
``except OSError`` in user code keeps working. Messages name the offending input.
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
