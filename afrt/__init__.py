"""The af runtime: loads bundles into sandboxed agents that join a swarm and run their workflows.

``afrt.load(bundle) -> Agent`` is the entry point; wasmtime and onnxruntime are imported only
when a backend that needs them is loaded.
"""

from .agent import Agent as Agent
from .agent import load as load
from .instrument import Instrument as Instrument
from .instrument import Instruments as Instruments
from .loader import LoadedBundle as LoadedBundle
from .loader import load_bundle as load_bundle
from .outcomes import Outcome as Outcome
from .outcomes import Outcomes as Outcomes
from .outcomes import RecordError as RecordError
from .steps import resolve_field as resolve_field
from .stream import RunOptions as RunOptions
from .stream import RunProgress as RunProgress
from .stream import RunSummary as RunSummary
from .stream import run_jsonl as run_jsonl
from .swarm import Swarm as Swarm

__all__ = [
    "Agent",
    "Instrument",
    "Instruments",
    "LoadedBundle",
    "Outcome",
    "Outcomes",
    "RecordError",
    "RunOptions",
    "RunProgress",
    "RunSummary",
    "Swarm",
    "load",
    "load_bundle",
    "resolve_field",
    "run_jsonl",
]
