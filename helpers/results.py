"""Record a chapter's run-dependent numbers and write prose that quotes them.

A chapter calls ``record("test_accuracy", acc, fmt="{:.1%}", headline="CNN test accuracy")``
right where it asserts the value. A paragraph that quotes run-dependent values is a
code cell ``prose("The network reaches {{test_accuracy}} on the test set.")``: it
fills each ``{{name}}`` with the text recorded under that name in this session and shows
the paragraph as a Markdown output. So the sentence can never contradict the output
beside it, and it reads the same in the built book, in JupyterLab and in Colab, none of
which has to understand anything beyond plain Markdown. The prose cells carry the
``remove-input`` tag (the book shows only the paragraph) and hidden-source metadata
(JupyterLab and Colab fold the code away).

``record`` also stores the formatted value in the cell's output; values given a
``headline`` label appear on the book's Status page from there. Run as a plain script,
``record`` prints ``[record] name = text`` and ``prose`` shows nothing, but both still
check their input. Introduced in chapter 01; every chapter uses them.
"""

from __future__ import annotations

import difflib
import math
import re
import textwrap
from numbers import Real
from typing import Any

import torch

__all__ = ["GLUE_MIME_PREFIX", "HEADLINE_KEY", "PROSE_KEY", "format_value", "prose", "record"]

#: The mime-type prefix myst-nb (and papermill/scrapbook before it) reads glued values from.
GLUE_MIME_PREFIX = "application/papermill.record/"
#: Output-metadata key under which a headline's label and raw value are stored.
HEADLINE_KEY = "pytorch_book"

#: Output-metadata key that marks a paragraph shown by ``prose``.
PROSE_KEY = "pytorch_book_prose"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# {{name}} in prose; the braces of LaTeX (\frac{a}{b}) are never doubled like this.
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_PLACEHOLDER_AND_SPACE = re.compile(r"\{\{(.*?)\}\}( ?)")
_GAP = re.compile(r"(?<=\S) {2,}(?=\S)")
# What record() stored in this session: name -> formatted text.
_recorded: dict[str, str] = {}


def _plain(value: Any) -> int | float | str | bool:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"value must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    elif hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        value = value.item()  # NumPy scalars
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, Real):
        return value if isinstance(value, int) else float(value)
    raise TypeError(f"value must be a number, a string or a scalar tensor, got {type(value).__name__}")


def format_value(value: Any, fmt: str = "{}") -> str:
    """The text that ``record`` stores for ``value``: ``fmt.format(value)``.

    Raises ``ValueError`` naming ``fmt`` when the format does not fit the value.
    """
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a str such as '{{:.3f}}', got {type(fmt).__name__}")
    if "{" not in fmt:
        raise ValueError(f"fmt must contain a replacement field such as '{{:.3f}}', got {fmt!r}")
    plain = _plain(value)
    if isinstance(plain, float) and not math.isfinite(plain):
        raise ValueError(f"value must be finite, got {plain}")
    try:
        return fmt.format(plain)
    except (ValueError, IndexError, KeyError) as error:
        raise ValueError(f"fmt {fmt!r} cannot format {plain!r}: {error}") from None


def record(name: str, value: Any, fmt: str = "{}", *, headline: str | None = None) -> None:
    """Store ``value`` under ``name`` for the book's prose and Status page.

    It returns nothing, so a cell that ends in ``record(...)`` shows no stray ``Out[]``.

    ``fmt`` is a ``str.format`` pattern (``"{:.1%}"``, ``"{:,}"``, ``"{:.2f}"``); the built
    book inserts the formatted text wherever a page writes ``{glue:}`name```. With
    ``headline`` (a short label) the value is also listed on the Status page.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not _NAME.match(name):
        raise ValueError(f"name must be a Python identifier such as 'test_accuracy', got {name!r}")
    if headline is not None and (not isinstance(headline, str) or not headline.strip()):
        raise ValueError(f"headline must be a non-empty str or None, got {headline!r}")
    text = format_value(value, fmt)
    _recorded[name] = text
    metadata: dict[str, Any] = {"scrapbook": {"name": name, "mime_prefix": GLUE_MIME_PREFIX}}
    if headline is not None:
        metadata[HEADLINE_KEY] = {"headline": headline, "value": _plain(value), "text": text}
    if _ipython_shell() is None:
        # A plain `python chapters/NN_x.py` run: there is no page to glue into.
        print(f"[record] {name} = {text}")
        return
    from IPython.display import display

    display({GLUE_MIME_PREFIX + "text/plain": text}, raw=True, metadata=metadata)


def prose(markdown: str) -> None:
    """Show a paragraph of Markdown with each ``{{name}}`` filled in from ``record``.

    ``name`` must have been recorded earlier in this session (a chapter records a value
    in the cell that computes and asserts it, above the paragraph). The paragraph is
    displayed as ``text/markdown``, which the book, JupyterLab and Colab all render;
    common indentation and surrounding blank lines are removed first.

    Raises ``ValueError`` naming what is wrong: a placeholder that is not a name or was
    never recorded, text with no placeholder at all (that belongs in a Markdown cell),
    or a MyST ``{glue}`` role, which only the book would understand.
    """
    if not isinstance(markdown, str):
        raise TypeError(f"markdown must be a str, got {type(markdown).__name__}")
    text = textwrap.dedent(markdown).strip("\n")
    if "{glue" in text:
        raise ValueError("prose uses {{name}} placeholders, not MyST {glue} roles")
    names = [match.strip() for match in _PLACEHOLDER.findall(text)]
    if not names:
        raise ValueError(
            "prose text has no {{name}} placeholder: text without recorded values belongs "
            f"in a Markdown cell (it starts {text[:60]!r})"
        )
    bad = [name for name in names if not _NAME.match(name)]
    if bad:
        raise ValueError(f"prose placeholders must be recorded names, got {bad}")
    missing = sorted({name for name in names if name not in _recorded})
    if missing:
        close = difflib.get_close_matches(missing[0], _recorded, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"prose quotes {missing}, which record() has not stored in this session "
            f"({len(_recorded)} names are): run the cell that records it first{hint}"
        )
    filled = _tidy(_PLACEHOLDER_AND_SPACE.sub(_fill, text))
    if _ipython_shell() is None:
        return
    from IPython.display import display

    bundle = {"text/markdown": filled, "text/plain": filled}
    display(bundle, raw=True, metadata={PROSE_KEY: True})


def _fill(match: re.Match[str]) -> str:
    """A placeholder's recorded text; an empty one takes the space after it along."""
    value = _recorded[match[1].strip()]
    return value + match[2] if value else ""


def _tidy(text: str) -> str:
    """Close the gaps an empty value leaves: a run of spaces between words becomes one,
    and a line loses its trailing spaces (two of them would make a Markdown line break).
    Indentation and fenced code blocks stay as written."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced:
            indent = line[: len(line) - len(line.lstrip(" "))]
            line = indent + _GAP.sub(" ", line[len(indent) :]).rstrip(" ")
        lines.append(line)
    return "\n".join(lines)


def _ipython_shell() -> object | None:
    # Imported here so that neither importing helpers nor running a chapter as a plain
    # script needs IPython.
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
