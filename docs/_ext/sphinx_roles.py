"""A griffe extension for the docs site: reST markup in docstrings rendered as Markdown.

snakepit's docstrings name other objects with Sphinx roles (``:class:`Pool```,
``:meth:`~Pool.execute```) and introduce examples with reST's ``::``. mkdocstrings renders
docstrings as Markdown, where both would show literally. This rewrites them once the
package is loaded (so every name in it can be resolved):

- a role becomes an *optional* autoref: a link when its target is on the site, plain
  code otherwise, so a reference to an internal object never fails a strict build;
- a line ending in ``::`` ends in ``:`` (a line that is only ``::`` goes), leaving the
  indented block under it, which Markdown renders as code;
- a line in a ``Raises:`` section that names no exception (``...and everything
  :meth:`execute` raises.``) is prose about the whole section: it moves to a paragraph
  after the section, where the Google-style parser reads it as text instead of as an
  exception called "...and everything".

Loaded by ``mkdocs.yml`` (``extensions:`` of the python handler); it changes what the site
shows, never the docstrings in ``src/``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|data|exc|mod|obj|const):`(?P<target>[^`]+)`"
)
_LITERAL_MARKER = re.compile(r"(?m)^(?P<text>.*?)\s?::[ \t]*$")
_RAISES = re.compile(r"(?P<indent>[ ]*)Raises:\s*$")
# `Name: ...`, `pkg.Name: ...`, `A | B: ...`: an item; `...and everything ...` is not
_RAISES_ITEM = re.compile(r"[ ]*[A-Za-z_][\w.\[\], |]*:")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _raises_prose_after(text: str) -> str:
    """Move lines of a ``Raises:`` section that name no exception to after the section."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        out.append(lines[i])
        header = _RAISES.fullmatch(lines[i])
        i += 1
        if header is None:
            continue
        base = len(header["indent"])
        prose: list[str] = []
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > base:
            line = lines[i]
            i += 1
            if _indent(line) == base + 4 and not _RAISES_ITEM.match(line):
                prose.append(" " * base + line.strip())
                while (i < len(lines) and lines[i].strip()
                       and _indent(lines[i]) > base + 4):  # its continuation lines
                    prose.append(" " * base + lines[i].strip())
                    i += 1
            else:
                out.append(line)
        if prose:
            out.extend(["", *prose])
    return "\n".join(out)


def _canonical(collection: griffe.ModulesCollection, path: str) -> str | None:
    """The path an object is documented under (aliases followed), or None if unknown."""
    try:
        found = collection.get_member(path)
        return str(found.final_target.path if found.is_alias else found.path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _identifier(obj: griffe.Object, target: str, collection: griffe.ModulesCollection) -> str:
    """The full path a role's target names, as seen from the docstring of ``obj``."""
    if target.startswith("snakepit."):
        return _canonical(collection, target) or target
    first, _, rest = target.partition(".")
    scope = obj if obj.is_class else obj.parent
    if isinstance(scope, griffe.Class) and first in scope.all_members:
        return f"{scope.path}.{target}"  # inherited members are rendered under the class
    try:
        resolved = obj.resolve(first)
    except griffe.NameResolutionError:
        return target
    full = f"{resolved}.{rest}" if rest else resolved
    return _canonical(collection, full) or full


def _rewrite(obj: griffe.Object, text: str, collection: griffe.ModulesCollection) -> str:
    def role(match: re.Match[str]) -> str:
        target = match["target"].strip()
        path = target.removeprefix("~")
        shown = path.rsplit(".", 1)[-1] if target.startswith("~") else path
        ident = _identifier(obj, path, collection)
        return (f'<autoref identifier="{html.escape(ident)}" optional>'
                f"<code>{html.escape(shown)}</code></autoref>")

    def literal(match: re.Match[str]) -> str:
        text = match["text"]
        return f"{text}:" if text.strip() else ""

    text = _raises_prose_after(text)
    return _LITERAL_MARKER.sub(literal, _ROLE.sub(role, text))


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and everything defined in it (not what it imports)."""
    yield obj
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader,
                   **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value,
                                               loader.modules_collection)
