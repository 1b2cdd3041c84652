"""Progress bars: live ``tqdm.auto`` bars for readers, plain text in the built book.

In JupyterLab and Colab, ``tqdm`` here is ``tqdm.auto.tqdm``: a live widget bar. The
book build sets ``BOOK_PLAIN_PROGRESS=1`` while it executes the chapters; then ``tqdm``
is the console bar, written to stdout, whose final state the page shows as text. A
widget bar would need JavaScript from a CDN to render, and the built book reads offline.

Only how the bar is drawn changes; the loop it wraps is the same. Introduced in
chapter 02 (the first training loop); ``helpers.training.fit`` uses it too.
"""

from __future__ import annotations

import os
import sys

__all__ = ["PLAIN_ENV", "plain_progress", "tqdm"]

#: Environment variable that switches every bar to plain text when set to ``1``.
PLAIN_ENV = "BOOK_PLAIN_PROGRESS"


def plain_progress() -> bool:
    """Whether bars are drawn as text (``BOOK_PLAIN_PROGRESS=1``) rather than as widgets."""
    value = os.environ.get(PLAIN_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{PLAIN_ENV} must be '0', '1' or unset, got {value!r}")
    return value == "1"


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm(*args, **kwargs)``, or a text bar on stdout in the book build."""
    if plain_progress():
        from tqdm.std import tqdm as text_tqdm

        kwargs.setdefault("file", sys.stdout)
        # Redraw rarely: the page keeps only the bar's last state anyway.
        kwargs.setdefault("mininterval", 5.0)
        return text_tqdm(*args, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm

    return auto_tqdm(*args, **kwargs)
