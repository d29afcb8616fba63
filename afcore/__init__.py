"""Shared layer of af: errors, source spans, diagnostics, parsed steps, the bundle container and its
typed manifest, and the one atomic file writer (`afcore.fsutil`).

It imports only the standard library and zstandard (and `cryptography`, on first use, in
`afcore.signing`), so that the compiler (`afc`) and the runtime (`afrt`) can share it without
importing each other. The names below are resolved on
first use, as in `af`: `import afcore` (which `import af` does, for ``__version__``) stays cheap
for `af run`, which needs the errors but not the diagnostics until something goes wrong.
"""

from __future__ import annotations

import importlib
import typing

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "AfError": "errors",
    "Diagnostic": "diagnostics",
    "Label": "diagnostics",
    "Manifest": "manifest",
    "SourceFile": "spans",
    "Span": "spans",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> typing.Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'afcore' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
