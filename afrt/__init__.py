"""The af runtime: loads bundles into sandboxed agents that join a swarm and run their workflows.

``afrt.load(bundle) -> Agent`` is the entry point; wasmtime and onnxruntime are imported only
when a backend that needs them is loaded. The Redis transport (`RedisBus`, `afrt.worker`,
`afrt.submit`) is imported on first use too: redis-py takes about 120 ms to import.
"""

import typing as _typing

from .acl import acl_rules as acl_rules
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

if _typing.TYPE_CHECKING:
    from .redisbus import RedisBus as RedisBus
    from .submit import SubmitSummary as SubmitSummary
    from .submit import new_submission_id as new_submission_id
    from .submit import status as swarm_status
    from .submit import submit as submit_records
    from .worker import WorkerSummary as WorkerSummary
    from .worker import serve as serve_worker
    from .federated.control import AdoptedModel as AdoptedModel
    from .federated.control import federation_status as federation_status
    from .federated.control import follow_rounds as follow_federation
    from .federated.control import pull_model as pull_federated_model
    from .federated.control import start_federation as start_federation
    from .federated.member import Participation as Participation
    from .federated.record import FedConfig as FedConfig

#: names imported on first use -> (their module, the name there)
_LAZY = {
    "AdoptedModel": ("federated.control", "AdoptedModel"),
    "FedConfig": ("federated.record", "FedConfig"),
    "Participation": ("federated.member", "Participation"),
    "federation_status": ("federated.control", "federation_status"),
    "follow_federation": ("federated.control", "follow_rounds"),
    "pull_federated_model": ("federated.control", "pull_model"),
    "start_federation": ("federated.control", "start_federation"),
    "RedisBus": ("redisbus", "RedisBus"),
    "SubmitSummary": ("submit", "SubmitSummary"),
    "WorkerSummary": ("worker", "WorkerSummary"),
    "new_submission_id": ("submit", "new_submission_id"),
    "serve_worker": ("worker", "serve"),
    "submit_records": ("submit", "submit"),
    "swarm_status": ("submit", "status"),
}


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdoptedModel",
    "Agent",
    "FedConfig",
    "Instrument",
    "Instruments",
    "LoadedBundle",
    "Outcome",
    "Outcomes",
    "Participation",
    "RecordError",
    "RedisBus",
    "RunOptions",
    "RunProgress",
    "RunSummary",
    "SubmitSummary",
    "Swarm",
    "WorkerSummary",
    "acl_rules",
    "federation_status",
    "follow_federation",
    "load",
    "load_bundle",
    "new_submission_id",
    "pull_federated_model",
    "resolve_field",
    "run_jsonl",
    "serve_worker",
    "start_federation",
    "submit_records",
    "swarm_status",
]
