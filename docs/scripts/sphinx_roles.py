"""A griffe extension: turn the docstrings' Sphinx roles into mkdocstrings links.

stochdepth's docstrings are Google style, but write cross-references as Sphinx roles,
which ``help()`` and IDEs show as they are::

    :class:`~stochdepth.DepthSampler`   ->  [`DepthSampler`][stochdepth.DepthSampler]
    :meth:`sample`                      ->  [`sample()`][stochdepth.UniformDepth.sample]
    :attr:`low`                         ->  `low` (when it belongs to a private class)

It also reads a Google-style ``Example:`` section as ``Examples:``: griffe takes only the
plural for the examples section and would render the singular as an admonition, its
``>>>`` lines as Markdown.

A target is a path from ``stochdepth``, a public name of ``stochdepth`` (and its
members: ``TrainingHistory.summary``), or a member of the class the docstring belongs
to; anything else, such as a member of a private base class (whose docstring public
subclasses inherit), stays plain code. A target that does
not exist then fails ``mkdocs build --strict`` with an unresolved reference, so a
wrong cross-reference cannot slip into the site.

``mkdocs.yml`` loads it by path, from the repository root.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

PACKAGE = "stochdepth"
EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|obj|exc|mod|data):`(~?)([\w.]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` as a Markdown cross-reference, ``Example:`` as ``Examples:``."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring once the object tree is complete."""
        if obj.docstring is None or obj.is_alias:
            return
        docstring = obj.docstring
        value = EXAMPLE_HEADING.sub(r"\1Examples:", docstring.value)
        docstring.value = ROLE.sub(lambda match: self._link(obj, match), value)

    def _link(self, obj: griffe.Object, match: re.Match[str]) -> str:
        role, short, target = match.groups()
        suffix = "()" if role in ("meth", "func") else ""
        path = self._resolve(obj, target)
        if path is None:
            return f"`{target}{suffix}`"
        shown = path.rsplit(".", 1)[-1] if short else target
        return f"[`{shown}{suffix}`][{path}]"

    def _resolve(self, obj: griffe.Object, target: str) -> str | None:
        """The public path of ``target`` seen from ``obj``'s docstring, if it has one."""
        exports = set(obj.package.exports or ())
        first, *rest = target.split(".")
        if first == PACKAGE:
            return target
        if first in exports:  # a public name, written without the package
            return ".".join([PACKAGE, first, *rest])
        cls = obj if obj.is_class else obj.parent
        if not rest and isinstance(cls, griffe.Class) and target in cls.all_members:
            # A member of the docstring's class; a private class (a base whose members
            # public subclasses inherit) has no page of its own to link to.
            return f"{PACKAGE}.{cls.name}.{target}" if cls.name in exports else None
        return None
