"""The ``${…}`` substitution grammar shared by pipelines (argv items, env values, input paths) and
triggers (param values).

A reference is ``${`` + dotted segments + ``}``, each segment made of letters, digits, ``_`` and
``-``: ``${params.date}``, ``${steps.prep.outputs.features}``, ``${event.headers.Nats-Msg-Id}``.
``$${`` stands for a literal ``${`` (for text such as ``bash -c 'echo $${HOME}'``). Any other ``${``
is malformed. A ``$`` not followed by ``{`` is just a character.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from daemon.errors import Invalid

_OPENING = re.compile(r"\$(\$?)\{")
_EXPRESSION = re.compile(r"([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\}")


class TemplateError(Invalid):
    """A malformed ``${…}``, or a reference with no value to substitute."""


def _tokens(text: str) -> Iterator[tuple[int, int, str | None]]:
    """(start, end, expression) of each ``${…}``; expression ``None`` for an escaped ``$${``."""
    position = 0
    while opening := _OPENING.search(text, position):
        if opening.group(1):
            yield opening.start(), opening.end(), None
            position = opening.end()
            continue
        expression = _EXPRESSION.match(text, opening.end())
        if not expression:
            raise TemplateError(f"malformed substitution at {text[opening.start() :][:40]!r}")
        yield opening.start(), expression.end(), expression.group(1)
        position = expression.end()


def references(text: str) -> list[str]:
    """The expressions referenced in ``text``, in order (``"params.date"`` for ``${params.date}``).

    Raises ``TemplateError`` for a malformed ``${``.
    """
    return [expression for _, _, expression in _tokens(text) if expression is not None]


def render(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``${expr}`` replaced by ``values[expr]``, in one pass (substituted values are
    not scanned again), and each ``$${`` by ``${``.

    Raises ``TemplateError`` for a malformed ``${`` or an expression missing from ``values``.
    """
    parts: list[str] = []
    position = 0
    for start, end, expression in _tokens(text):
        parts.append(text[position:start])
        if expression is None:
            parts.append("${")
        elif expression in values:
            parts.append(values[expression])
        else:
            raise TemplateError(f"no value for ${{{expression}}}")
        position = end
    parts.append(text[position:])
    return "".join(parts)
