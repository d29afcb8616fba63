"""The af compiler: .af file -> validated AgentSpec -> ONNX and WebAssembly -> bundle (.afb).

Its public API is `__all__`; the `af` command uses nothing else from afc.
"""

from .agentfile import AgentFile as AgentFile
from .agentfile import load_agent_file as load_agent_file
from .agentfile import validate as validate
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
from .packer import PackResult as PackResult
from .packer import pack as pack

__all__ = [
    "AgentFile",
    "CompileResult",
    "DEFAULT_TARGETS",
    "EMIT_FORMS",
    "PackResult",
    "compile_agent",
    "compile_file",
    "compile_spec",
    "default_output",
    "emit_intermediate",
    "ensure_emit_form",
    "load_agent_file",
    "pack",
    "parse_targets",
    "validate",
    "write_agent_file",
]
