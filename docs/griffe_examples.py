"""griffe extension for the API reference: read a Google-style ``Example:`` section that
holds doctest lines (``>>>``) as an ``Examples:`` section, so it renders as Python code.

griffe reads only the plural as an examples section; the singular becomes an admonition
whose ``>>>`` lines Markdown takes for nested block quotes. Renaming the three sections in
``src/`` (``minimize``, ``minimize_batch``, ``dict_minimize.minimize``) to ``Examples:``
would make this file unnecessary.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(
    r"^(?P<indent>[ \t]*)Example:[ \t]*\n(?=(?:[ \t]*\n)*[ \t]+>>>)", re.MULTILINE
)


class DoctestExamples(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and "Example:" in obj.docstring.value:
            obj.docstring.value = _SINGULAR.sub(r"\g<indent>Examples:\n", obj.docstring.value)
