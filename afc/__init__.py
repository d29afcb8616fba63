"""The af compiler: .af file -> validated AgentSpec -> ONNX and WebAssembly -> bundle (.afb).

Its public API is `__all__`; the `af` command uses nothing else from afc.
"""

from .agentfile import AgentFile as AgentFile
from .agentfile import load_agent_bytes as load_agent_bytes
from .agentfile import load_agent_file as load_agent_file
from .agentfile import validate as validate
from .agentfile import validate_bytes as validate_bytes
from .agentfile import write_agent_file as write_agent_file
from .compile import DEFAULT_TARGETS as DEFAULT_TARGETS
from .compile import EMIT_FORMS as EMIT_FORMS
from .compile import CompileResult as CompileResult
from .compile import compile_agent as compile_agent
from .compile import compile_file as compile_file
from .compile import compile_spec as compile_spec
from .compile import default_output as default_output
from .compile import emit_intermediate as emit_intermediate
from .compile import ensure_emit_form as ensure_emit_form
from .compile import parse_targets as parse_targets
from .expr import parse_step as parse_step
from .packer import PackResult as PackResult
from .packer import pack as pack
from .reader import read_container as read_container
from .tensors import TENSOR_SECTIONS as TENSOR_SECTIONS
from .tensors import encode_tensors as encode_tensors
from .train import EpochStats as EpochStats
from .train import TrainResult as TrainResult
from .train import train_file as train_file
from .writer import write_container as write_container

__all__ = [
    "AgentFile",
    "CompileResult",
    "DEFAULT_TARGETS",
    "EMIT_FORMS",
    "EpochStats",
    "PackResult",
    "TENSOR_SECTIONS",
    "TrainResult",
    "check_model_bytes",
    "compile_agent",
    "compile_file",
    "compile_spec",
    "default_output",
    "emit_intermediate",
    "encode_tensors",
    "ensure_emit_form",
    "load_agent_bytes",
    "load_agent_file",
    "pack",
    "parse_step",
    "parse_targets",
    "read_container",
    "train_file",
    "validate",
    "validate_bytes",
    "write_agent_file",
    "write_container",
]

#: names loaded on first use: they import onnx (~145 ms), which `af validate` never needs
_LAZY = {"check_model_bytes": "lower_onnx"}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
