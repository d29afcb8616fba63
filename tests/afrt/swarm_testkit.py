"""A tiny stand-in agent for the swarm and workflow tests: numpy matmul with the `afrt.Agent` interface.

Workflow semantics (guards, order, memory) do not depend on the backend, so these tests run
without onnxruntime; the numerical end-to-end checks use real compiled bundles instead.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from afcore.errors import AgentTrap
from afcore.steps import Step

#: the reference example's workflows
REFERENCE_WORKFLOWS = {
    "initialization": ["load_neural_network", "initialize_memory", "connect_to_swarm", "register_capabilities"],
    "execution": ["receive_input", "process_neural_network", "update_memory", "send_output"],
    "shutdown": ["save_state", "disconnect_from_swarm", "cleanup_resources"],
}


def steps(workflows: Mapping[str, Sequence[Step | str]]) -> dict[str, tuple[Step, ...]]:
    """Turn names into `Step`s (Steps pass through)."""
    return {k: tuple(s if isinstance(s, Step) else Step(s, source=s) for s in v) for k, v in workflows.items()}


class FakeAgent:
    """``infer(x) = x @ W``; a record whose first value is 666 traps (to test per-record failure)."""

    def __init__(self, *, workflows=None, input_size: int = 4, output_size: int = 3, limits=None, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.weight = rng.standard_normal((input_size, output_size)).astype(np.float32)
        self.name, self.version, self.digest, self.backend = "fake", "1.0", "f" * 64, "onnx"
        self.input_size, self.output_size, self.max_batch = input_size, output_size, 64
        self.resources = {"limits": dict(limits or {})}
        self.workflows = steps(workflows or REFERENCE_WORKFLOWS)
        self.calls: list[int] = []  # batch size of every infer call
        self.closed = False

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        if (x[:, 0] == 666).any():
            raise AgentTrap("unreachable executed", trap_code="unreachable")
        with np.errstate(over="ignore"):  # huge inputs overflow to infinity, as a real backend's would
            return x @ self.weight

    def replica(self) -> FakeAgent:
        twin = FakeAgent(input_size=self.input_size, output_size=self.output_size)
        twin.weight, twin.workflows, twin.resources = self.weight, self.workflows, self.resources
        twin.calls = self.calls
        return twin

    def close(self) -> None:
        self.closed = True
