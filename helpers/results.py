"""Record a chapter's run-dependent numbers so the built book can quote them.

A chapter calls ``record("test_accuracy", acc, fmt="{:.1%}", headline="CNN test accuracy")``
right where it asserts the value. The call stores the formatted value in the cell's
output the way myst-nb's ``glue`` does, so prose in the built book can insert it with
``{glue:}`test_accuracy``` and can never contradict the output beside it. Values given a
``headline`` label also appear on the book's Status page.

It needs neither myst-nb nor a build: in JupyterLab or Colab the record shows nothing,
run as a plain script it prints ``[record] name = text``, and the chapter runs unchanged.
Introduced in chapter 01; every chapter uses it.
"""

from __future__ import annotations

import math
import re
from numbers import Real
from typing import Any

import torch

__all__ = ["GLUE_MIME_PREFIX", "HEADLINE_KEY", "format_value", "record"]

#: The mime-type prefix myst-nb (and papermill/scrapbook before it) reads glued values from.
GLUE_MIME_PREFIX = "application/papermill.record/"
#: Output-metadata key under which a headline's label and raw value are stored.
HEADLINE_KEY = "pytorch_book"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    metadata: dict[str, Any] = {"scrapbook": {"name": name, "mime_prefix": GLUE_MIME_PREFIX}}
    if headline is not None:
        metadata[HEADLINE_KEY] = {"headline": headline, "value": _plain(value), "text": text}
    if _ipython_shell() is None:
        # A plain `python chapters/NN_x.py` run: there is no page to glue into.
        print(f"[record] {name} = {text}")
        return
    from IPython.display import display

    display({GLUE_MIME_PREFIX + "text/plain": text}, raw=True, metadata=metadata)


def _ipython_shell() -> object | None:
    # Imported here so that neither importing helpers nor running a chapter as a plain
    # script needs IPython.
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
