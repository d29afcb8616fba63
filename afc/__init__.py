"""The af compiler: .af file -> validated AgentSpec -> ONNX and WebAssembly -> bundle (.afb)."""

from .agentfile import AgentFile as AgentFile
from .agentfile import load_agent_file as load_agent_file
from .agentfile import validate as validate
from .agentfile import write_agent_file as write_agent_file
from .compile import compile_file as compile_file

__all__ = ["AgentFile", "compile_file", "load_agent_file", "validate", "write_agent_file"]
