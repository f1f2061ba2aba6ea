"""A griffe extension: turn the docstrings' Sphinx roles into mkdocstrings links.

stochdepth's docstrings are Google style, but write cross-references as Sphinx roles,
which ``help()`` and IDEs show as they are::

    :class:`~stochdepth.DepthSampler`   ->  [`DepthSampler`][stochdepth.DepthSampler]
    :meth:`sample`                      ->  [`sample()`][stochdepth.UniformDepth.sample]
    :attr:`low`                         ->  `low` (when it belongs to a private class)

It also reads a Google-style ``Example:`` section as ``Examples:``: griffe takes only the
plural for the examples section and would render the singular as an admonition, its
``>>>`` lines as Markdown.

A dotted target is linked as written. A bare name is a public object of ``stochdepth``
or a member of the class the docstring belongs to; a member of a private class (whose
docstring is shown through a public subclass) stays plain code. A target that does
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
        if "." in target:
            path = target
        else:
            path = self._resolve(obj, target)
            if path is None:
                return f"`{target}{suffix}`"
        shown = path.rsplit(".", 1)[-1] if short or "." not in target else target
        return f"[`{shown}{suffix}`][{path}]"

    def _resolve(self, obj: griffe.Object, name: str) -> str | None:
        """The public path of a bare ``name`` seen from ``obj``'s docstring."""
        cls = obj if obj.is_class else obj.parent
        if isinstance(cls, griffe.Class) and name in cls.all_members:
            if cls.name.startswith("_"):
                return None
            return f"{PACKAGE}.{cls.name}.{name}"
        if not name.startswith("_"):
            return f"{PACKAGE}.{name}"
        return None
