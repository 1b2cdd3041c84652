"""A Sphinx extension of this book's: small repairs to the pages the toolchain writes.

sphinx-thebe registers its inline configuration script once per read of the sources,
and a build that reads twice puts two ``const THEBE_JS_URL`` declarations on a page:
the second is a JavaScript error in every reader's console. This keeps the first copy
of each inline script.
"""

from __future__ import annotations

from typing import Any


def _drop_repeated_inline_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[str] = set()
    kept = []
    for script in scripts:
        # Sphinx passes _JavaScript objects (str subclasses with .attributes); inline
        # scripts carry their code in attributes["body"].
        body = getattr(script, "attributes", {}).get("body")
        if body:
            if body in seen:
                continue
            seen.add(body)
        kept.append(script)
    context["script_files"] = kept


def setup(app) -> dict[str, Any]:
    app.connect("html-page-context", _drop_repeated_inline_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
