"""The profiler: an `afrt.Instrument` that measures step and workflow wall times, backend time and
wasm fuel per record, messages per topic and traps per code (`af profile`, docs/tools.md), and the time
of each network layer on either backend, in a separate pass after the run (`afprof.layers`)."""

from .profiler import Profiler as Profiler
from .report import Distribution as Distribution
from .report import ProfileReport as ProfileReport
from .report import StepProfile as StepProfile
from .report import WorkflowProfile as WorkflowProfile

__all__ = ["Distribution", "ProfileReport", "Profiler", "StepProfile", "WorkflowProfile"]
