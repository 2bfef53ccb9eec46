"""MkDocs hook: show Sphinx cross-reference roles in docstrings as plain code.

The package's docstrings use Sphinx roles (:func:`register_stack`,
:class:`~napari_maskalign.engine.FrameRegistrar`) so that they read well in
IDEs, ``help()`` and Sphinx. mkdocstrings renders Markdown, where the role
prefix would show up literally as ":func:". This hook removes the prefix from
the rendered pages and applies Sphinx's "~" rule (show only the last name).
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):<code>(~?)([^<]*)</code>")


def _replace(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_replace, html)
