"""Sphinx extension: let myst-nb's glue roles format numpy scalars.

NumPy 2 prints scalars as ``np.float64(0.5)``; myst-nb 1.4 formats a glued value by ``literal_eval`` of its
``text/plain``, which fails on that repr, so ``{glue:text}`name:.3f``` of a numpy scalar would only warn.
This unwraps ``np.<type>(...)`` before myst-nb formats it. Nothing else changes."""
from __future__ import annotations

import re

_NUMPY_SCALAR = re.compile(r"^np\.(?:float|int|uint|bool_?)\w*\((.*)\)$", re.S)


def unwrap_numpy_scalar(text: str) -> str:
    """``"np.float64(0.25)"`` -> ``"0.25"``; anything else unchanged."""
    match = _NUMPY_SCALAR.match(text.strip())
    return match.group(1) if match else text


def setup(app):
    from myst_nb.core import variables
    from myst_nb.ext.glue import crossref, roles

    original = variables.format_plain_text

    def format_plain_text(text: str, fmt_spec: str) -> str:
        return original(unwrap_numpy_scalar(text), fmt_spec)

    for module in (variables, roles, crossref):
        if hasattr(module, "format_plain_text"):
            module.format_plain_text = format_plain_text
    return {"parallel_read_safe": True, "parallel_write_safe": True}
