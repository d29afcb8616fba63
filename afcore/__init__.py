"""Shared layer of af: errors, source spans, diagnostics, parsed steps and the bundle container.

It imports only the standard library and zstandard, so that the compiler (`afc`) and the
runtime (`afrt`) can share it without importing each other.
"""

from .diagnostics import Diagnostic as Diagnostic
from .diagnostics import Label as Label
from .errors import AfError as AfError
from .spans import SourceFile as SourceFile
from .spans import Span as Span

__version__ = "0.1.0"

__all__ = ["AfError", "Diagnostic", "Label", "SourceFile", "Span", "__version__"]
