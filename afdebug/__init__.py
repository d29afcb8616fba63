"""The debugger: an `afrt.Instrument` with breakpoints, stepping, field inspection and a trace of
the steps with their source lines (`af debug`, docs/tools.md)."""

from .debugger import Breakpoint as Breakpoint
from .debugger import Debugger as Debugger
from .debugger import ensure_breakpoints as ensure_breakpoints
from .debugger import parse_breakpoint as parse_breakpoint
from .debugger import parse_field as parse_field

__all__ = ["Breakpoint", "Debugger", "ensure_breakpoints", "parse_breakpoint", "parse_field"]
