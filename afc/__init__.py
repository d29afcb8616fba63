"""The af compiler: .af file -> validated AgentSpec -> ONNX and WebAssembly -> bundle (.afb)."""

from .agentfile import AgentFile as AgentFile
from .agentfile import load_agent_file as load_agent_file
from .agentfile import validate as validate
from .agentfile import write_agent_file as write_agent_file
from .compile import compile_file as compile_file
from .train import EpochStats as EpochStats
from .train import TrainResult as TrainResult
from .train import train_file as train_file

__all__ = [
    "AgentFile",
    "EpochStats",
    "TrainResult",
    "compile_file",
    "load_agent_file",
    "train_file",
    "validate",
    "write_agent_file",
]
