"""Turn a checked `AgentFile` into the compiler's IR (`afc.spec.AgentSpec`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .spec import AgentSpec, LayerSpec, NetworkSpec, ResourcesSpec, WorkflowSpec

if TYPE_CHECKING:
    from .agentfile import AgentFile

__all__ = ["build_agent", "build_network"]

#: sections that become the network and the training data rather than pass-through bytes
_TENSOR_SECTIONS = ("neural_weights", "training_data")


def build_agent(agent_file: AgentFile) -> AgentSpec:
    """Build the IR of a loaded (hence valid) agent file.

    Args:
        agent_file: from `afc.load_agent_file`.

    Returns:
        The agent: network with float32 read-only weights, resources, parsed workflows, header.
    """
    header = agent_file.header
    training = agent_file.training_data
    return AgentSpec(
        name=header["name"],
        version=header["version"],
        network=build_network(agent_file),
        resources=_build_resources(agent_file),
        workflows={name: WorkflowSpec(name, steps, agent_file.span_of(("workflows", name), part="key"))
                   for name, steps in agent_file.workflows.items()},
        header=header,
        header_text=agent_file.header_text,
        source_path=agent_file.path,
        source_sha256=agent_file.container.sha256,
        description=header.get("description"),
        author=header.get("author"),
        created=header.get("created"),
        modified=header.get("modified"),
        training_data=(_frozen(training["inputs"]), _frozen(training["targets"])) if training else None,
        extra_sections={name: s.payload for name, s in agent_file.sections.items() if name not in _TENSOR_SECTIONS},
        span=agent_file.span_of(("name",)),
    )


def build_network(agent_file: AgentFile) -> NetworkSpec:
    """Build the network of an agent: hidden layers with ``activation_function``, then the output layer.

    Args:
        agent_file: a loaded agent file.

    Returns:
        The network; layer i holds ``layers.<i>.weight`` [out, in] and ``layers.<i>.bias`` [out].
    """
    config = agent_file.header["neural_config"]
    hidden = [int(size) for size in config["hidden_layers"]]
    normalization = config.get("input_normalization")
    weights = agent_file.weights
    layers = []
    for i in range(len(hidden) + 1):
        is_output = i == len(hidden)
        layers.append(LayerSpec(
            index=i,
            weight=_frozen(weights[f"layers.{i}.weight"]),
            bias=_frozen(weights[f"layers.{i}.bias"]),
            activation=config.get("output_activation", "linear") if is_output else config["activation_function"],
            span=agent_file.span_of(("neural_config", "output_size") if is_output
                                    else ("neural_config", "hidden_layers", i)),
        ))
    return NetworkSpec(
        input_size=int(config["input_size"]),
        output_size=int(config["output_size"]),
        layers=tuple(layers),
        hidden_activation=config["activation_function"],
        output_activation=config.get("output_activation", "linear"),
        learning_rate=config.get("learning_rate"),
        span=agent_file.span_of(("neural_config",), part="key"),
        input_mean=_frozen(np.asarray(normalization["mean"], np.float32)) if normalization else None,
        input_scale=_frozen(np.asarray(normalization["scale"], np.float32)) if normalization else None,
        labels=tuple(config["labels"]) if config.get("labels") else None,
    )


def _build_resources(agent_file: AgentFile) -> ResourcesSpec:
    resources = agent_file.header.get("resources") or {}
    return ResourcesSpec(
        limits={k: float(v) for k, v in (resources.get("limits") or {}).items()},
        requirements={k: float(v) for k, v in (resources.get("requirements") or {}).items()},
        span=agent_file.span_of(("resources",), part="key") if "resources" in agent_file.header else None,
    )


def _frozen(array: np.ndarray) -> np.ndarray:
    # Tensors decoded from a section are already read-only float32 views of its payload: no copy then.
    if array.dtype == np.float32 and array.flags.c_contiguous and not array.flags.writeable:
        return array
    out = np.array(array, dtype=np.float32, order="C", copy=True)
    out.flags.writeable = False
    return out
