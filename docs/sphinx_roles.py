"""A griffe extension for the API reference (mkdocs.yml loads it): Sphinx roles become cross-references.

The package's docstrings name other objects with Sphinx roles (``:class:`Engine```, ``:func:`~arr_coc_stream.stream```),
which Markdown would print as they are. Each becomes an optional cross-reference: a link where the object has a
place on the site, plain code where it has none, so ``mkdocs build --strict`` does not fail on an object the
reference leaves out. A name is resolved in the scope of the docstring's object, as Sphinx would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):`(?P<short>~?)(?P<target>[^`]+)`")


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every member defined under it (re-exports are documented where they are defined)."""
    yield obj
    for member in obj.members.values():
        if isinstance(member, griffe.Object):  # not a griffe.Alias
            yield from _objects(member)


def _identifier(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``, or ``target`` itself when it cannot be resolved."""
    head, dot, rest = target.partition(".")
    try:
        return obj.resolve(head) + dot + rest
    except (griffe.NameResolutionError, ValueError):
        return target


def crossrefs(obj: griffe.Object, text: str) -> str:
    """``text`` with each Sphinx role replaced by an optional autoref to its object."""

    def replace(match: re.Match[str]) -> str:
        target = match["target"]
        title = target.rsplit(".", 1)[-1] if match["short"] else target
        return f'<autoref identifier="{_identifier(obj, target)}" optional><code>{title}</code></autoref>'

    return _ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = crossrefs(obj, obj.docstring.value)
