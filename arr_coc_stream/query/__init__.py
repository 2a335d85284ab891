"""Query heads: plug-ins that turn a text query into graph inputs and score cells against it (DESIGN.md section 7).

- :mod:`~arr_coc_stream.query.base`: the interface (:class:`QueryHead`, :class:`QueryScorer`,
  :class:`EncodedQuery`).
- :mod:`~arr_coc_stream.query.attributes`: ``"attributes"``, the offline default (colour, text, motion and
  position words).
- :mod:`~arr_coc_stream.query.clip`: ``"clip"``, open queries through a CLIP model
  (:mod:`~arr_coc_stream.query.clip_model` loads it).

``EngineConfig(query_encoder=name)`` selects a head from :data:`HEADS`; :func:`register_head` adds one.

    >>> from arr_coc_stream.query import build_head
    >>> from arr_coc_stream import EngineConfig
    >>> head = build_head(EngineConfig())
    >>> head.name, [s.name for s in head.query_inputs()]
    ('attributes', ['query_weights', 'query_targets'])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import QueryError
from .attributes import AttributeQuery, AttributesHead
from .base import Companion, EncodedQuery, QueryHead, QueryScorer, QueryWarning
from .clip import ClipHead, ClipQuery

if TYPE_CHECKING:
    from ..config import EngineConfig

__all__ = [
    "HEADS",
    "AttributeQuery",
    "AttributesHead",
    "ClipHead",
    "ClipQuery",
    "Companion",
    "EncodedQuery",
    "QueryHead",
    "QueryScorer",
    "QueryWarning",
    "build_head",
    "head_type",
    "register_head",
    "unregister_head",
]

HEADS: dict[str, type[QueryHead]] = {AttributesHead.name: AttributesHead, ClipHead.name: ClipHead}


def register_head(head: type[QueryHead]) -> type[QueryHead]:
    """Make ``head`` selectable as ``EngineConfig(query_encoder=head.name)`` (usable as a class decorator)."""
    if not (isinstance(head, type) and issubclass(head, QueryHead)) or not isinstance(getattr(head, "name", None), str):
        raise QueryError(f"register_head takes a QueryHead subclass with a name, got {head!r}")
    if head.name in HEADS and HEADS[head.name] is not head:
        raise QueryError(f"a query head named {head.name!r} is already registered ({HEADS[head.name].__name__})")
    HEADS[head.name] = head
    return head


def unregister_head(name: str) -> None:
    """Remove a head added with :func:`register_head`."""
    HEADS.pop(name, None)


def head_type(name: str) -> type[QueryHead]:
    """The head registered under ``name``; :class:`QueryError` names the available ones otherwise."""
    head = HEADS.get(name) if isinstance(name, str) else None
    if head is None:
        raise QueryError(f"unsupported query encoder {name!r}; available: {', '.join(sorted(HEADS))}")
    return head


def build_head(config: EngineConfig, **resources: Any) -> QueryHead:
    """The head ``config.query_encoder`` names, built for ``config`` (``resources`` go to its constructor, e.g.
    ``model=`` a loaded CLIP model for the clip head)."""
    return head_type(config.query_encoder)(config, **resources)
