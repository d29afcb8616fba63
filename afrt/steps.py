"""The implementations of the steps of `afcore.steps.STEP_DEFS`. Each is ``step(ctx, step, state)``;
docs/steps.md documents them.

Lifecycle steps (``state`` is None): load_neural_network, initialize_memory, connect_to_swarm,
register_capabilities, save_state, disconnect_from_swarm, cleanup_resources.
Record steps (execution workflow only): receive_input, process_neural_network, update_memory,
send_output; ``save_state`` may also run per record (``every=N``).

Steps never block and never encode: events go to the context (`AgentContext.publish`) and results
to the record's or batch's state; the runner publishes them (`afrt.messages` encodes them).

The record steps also have a batch form, ``step(ctx, step, batch)`` over a `BatchState`, with the
effects of the step run record after record (`BATCH_STEPS`; see `afrt.workflow`). Each batch form
shares its per-record logic with its step, so that the two cannot drift apart.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from afcore.errors import AgentTrap, ExecutionError, ResourceLimitError, StateError
from afcore.steps import MEMORY_FIELDS as MEMORY_FIELD_TYPES
from afcore.steps import STEP_DEFS, Step

from .bus import TOPIC_LIFECYCLE, TOPIC_UPDATES, ensure_topic
from .state import commit_checkpoint, load_checkpoint, prepare_checkpoint

if TYPE_CHECKING:
    from .workflow import AgentContext, BatchState, RecordState

__all__ = [
    "BATCH_STEPS", "MEMORY_FIELDS", "STEPS", "capabilities", "ensure_complete", "ensure_known",
    "fresh_memory", "learner_of", "lifecycle_event", "resolve_field", "step_arg",
]

#: the fields of ``memory`` (usable in guards as ``memory.<field>``), from the step table
MEMORY_FIELDS = tuple(MEMORY_FIELD_TYPES)


def fresh_memory() -> dict[str, Any]:
    """Return the memory of an agent that has processed nothing."""
    return {
        "count": 0, "errors": 0, "last_id": None, "last_output": None, "last_argmax": None,
        "last_max": None, "mean_max": 0.0, "class_counts": {}, "checkpoints": 0, "started": 1,
    }


def step_arg(step: Step, name: str) -> Any:
    """Return argument ``name`` of ``step``, or its default from `STEP_DEFS`.

    Raises:
        ExecutionError: AF5204 for a value of the wrong type or out of range (a bundle that
            `af validate` would refuse, AF2022/AF2027).
    """
    spec = STEP_DEFS[step.name].arguments[name]
    value = step.args.get(name, spec.default)
    if value is spec.default:
        return value
    kind = spec.type
    if kind is float and type(value) is int:
        value = float(value)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ExecutionError(
            f"argument `{name}` of `{step.name}` must be {kind.__name__}, found {value!r}",
            code="AF5204", hint="see docs/steps.md for the arguments of each step",
        )
    if spec.minimum is not None and value < spec.minimum:
        raise ExecutionError(f"`{name}` must be at least {spec.minimum}, found {value}", code="AF5204")
    if spec.above is not None and not (math.isfinite(value) and value > spec.above):
        raise ExecutionError(f"`{name}` must be a finite number above {spec.above:g}, found {value}", code="AF5204")
    if spec.choices is not None and value not in spec.choices:
        raise ExecutionError(f"`{name}` must be one of {', '.join(spec.choices)}, found {value!r}", code="AF5204")
    return value


def load_neural_network(ctx: AgentContext, step: Step, state: None) -> None:
    """Make the network ready: one warm-up inference on zeros checks the backend answers.

    A warm-up that hits a limit or traps does not stop the agent: limits fail records one by one
    (the contract of `af run`), so it is noted once and each record then reports its own error.
    """
    agent = ctx.agent
    try:
        out = agent.infer(np.zeros((1, agent.input_size), dtype=np.float32))
    except (ResourceLimitError, AgentTrap) as exc:
        ctx.notice(f"load_neural_network: the warm-up call failed ({exc.code}: {exc.message})")
        ctx.network_ready = True
        return
    if getattr(out, "shape", None) != (1, agent.output_size):
        raise ExecutionError(f"the network returned shape {getattr(out, 'shape', None)}", code="AF5209")
    ctx.network_ready = True


def initialize_memory(ctx: AgentContext, step: Step, state: None) -> None:
    """Create the memory; with a state directory, restore the last checkpoint."""
    memory = fresh_memory()
    if ctx.state_dir is not None:
        payload = load_checkpoint(ctx.state_dir, ctx.identity)
        if payload is not None:
            _check_same_bundle(ctx, payload)
            _restore_learning(ctx, payload)
            memory.update(_restored_memory(ctx, payload.get("memory")))
            memory["started"] = int(memory.get("started", 0)) + 1
            ctx.restored = {"count": memory["count"], "saved_at": payload.get("saved_at")}
    ctx.memory = memory


def _restore_learning(ctx: AgentContext, payload: Mapping[str, Any]) -> None:
    """Put back the weights and the learner state of a checkpoint (online learning).

    Weights are restored only into the build that wrote them (same bundle digest): a recompiled
    or retrained bundle starts from its own weights, as its author meant.
    """
    saved = payload.get("weights")
    if saved is None:
        return
    agent = ctx.agent
    if payload.get("bundle_digest") not in (None, getattr(agent, "digest", None)):
        ctx.notice("initialize_memory: the checkpoint's weights belong to another build of this agent; "
                   "it starts from the bundle's own weights")
        return
    from afcore.errors import AfError

    from .weights import decode_layers

    try:
        agent.set_weights(decode_layers(saved))
    except (ValueError, AfError) as exc:
        raise StateError(f"the checkpoint of {ctx.agent_id} holds weights that do not fit the network "
                         f"({getattr(exc, 'message', exc)})", code="AF5304",
                         hint="delete the checkpoint, or use a fresh --state-dir") from None
    ctx.saved_learner = payload.get("learner")


def _restored_memory(ctx: AgentContext, saved: Any) -> dict[str, Any]:
    """Return the memory of a checkpoint, refusing one whose fields a later step could not use."""
    saved = saved or {}
    numbers = [k for k, kind in MEMORY_FIELD_TYPES.items() if kind == "number"]
    bad = ["its shape"] if not isinstance(saved, dict) or not isinstance(saved.get("class_counts", {}), dict) else [
        k for k in numbers if k in saved and not _finite_number(saved[k])]
    if bad:
        raise StateError(
            f"the checkpoint of {ctx.agent_id} holds a memory that cannot be used ({', '.join(bad)})",
            code="AF5250", hint="delete the checkpoint, or use a fresh --state-dir",
        )
    return saved


def _finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _check_same_bundle(ctx: AgentContext, payload: Mapping[str, Any]) -> None:
    """Refuse another agent's checkpoint; note (only) that a different build of this agent wrote it."""
    name = getattr(ctx.agent, "name", None)
    if payload.get("agent") not in (None, name):
        raise StateError(
            f"the checkpoint of {ctx.agent_id} belongs to agent `{payload.get('agent')}`, not `{name}`",
            code="AF5251",
            hint="use a fresh --state-dir for a different agent",
        )
    digest = getattr(ctx.agent, "digest", None)
    if digest and payload.get("bundle_digest") not in (None, digest):
        # Recompiled (new targets, new weights): memory and identity still belong to this agent.
        ctx.notice(f"initialize_memory: the checkpoint was written by another build of `{name}` "
                   f"(bundle {str(payload.get('bundle_digest'))[:12]}); its memory is restored")


def connect_to_swarm(ctx: AgentContext, step: Step, state: None) -> None:
    """Join the swarm: publish ``joined`` on agent.lifecycle. Without it nothing is published."""
    if ctx.bus is None:
        ctx.notice("connect_to_swarm: no bus, the agent runs alone")
        return
    ctx.connected = True
    ctx.publish(TOPIC_LIFECYCLE, lifecycle_event(ctx, "joined"))


def lifecycle_event(ctx: AgentContext, event: str, **extra: Any) -> dict[str, Any]:
    """Return an ``agent.lifecycle`` event of this replica (joined, capabilities, heartbeat, left)."""
    return {"event": event, "agent": ctx.agent_id, "swarm": ctx.swarm, "time": time.time(), **extra}


def capabilities(ctx: AgentContext) -> dict[str, Any]:
    """Return what ``register_capabilities`` announces: name, version and signature."""
    agent = ctx.agent
    return {
        "name": agent.name,
        "version": agent.version,
        "input": {"name": "input", "dtype": "float32", "shape": [None, agent.input_size]},
        "output": {"name": "output", "dtype": "float32", "shape": [None, agent.output_size]},
        "backend": getattr(agent, "backend", None),
        "max_batch": getattr(agent, "max_batch", None),
    }


def register_capabilities(ctx: AgentContext, step: Step, state: None) -> None:
    """Publish ``capabilities`` (name, version, input/output signature) on agent.lifecycle."""
    if not ctx.connected:
        ctx.notice("register_capabilities: not connected to a swarm (add connect_to_swarm before it)")
        return
    ctx.publish(TOPIC_LIFECYCLE, lifecycle_event(ctx, "capabilities", capabilities=capabilities(ctx)))


def receive_input(ctx: AgentContext, step: Step, state: RecordState) -> None:
    """Take the record's input vector; later steps see it as ``input``."""
    state.received = True


def receive_input_batch(ctx: AgentContext, step: Step, batch: BatchState) -> None:
    """`receive_input` for every record of ``batch``."""
    batch.received = True


def _ensure_can_process(ctx: AgentContext, received: bool) -> None:
    if not ctx.network_ready:
        raise ExecutionError(
            "the network is not loaded", code="AF5205",
            hint="add load_neural_network to the initialization workflow",
        )
    if not received:
        raise ExecutionError(
            "no input received for this record", code="AF5206",
            hint="put receive_input before process_neural_network in the execution workflow",
        )


def process_neural_network(ctx: AgentContext, step: Step, state: RecordState) -> None:
    """Run the network on the received input; its result becomes ``output``."""
    _ensure_can_process(ctx, state.received)
    if state.compute_error is not None:
        raise state.compute_error
    state.output = state.computed


def process_neural_network_batch(ctx: AgentContext, step: Step, batch: BatchState) -> None:
    """`process_neural_network` for every record of ``batch``; a record the backend failed fails here."""
    _ensure_can_process(ctx, batch.received)
    if batch.compute_errors is not None:
        for i in batch.alive:
            if batch.compute_errors[i] is not None:
                batch.fail(i, batch.compute_errors[i])
    batch.output = True


def update_memory(ctx: AgentContext, step: Step, state: RecordState) -> None:
    """Update counts and running statistics from the record's output (see `MEMORY_FIELDS`).

    With ``window=N``, ``mean_max`` is the mean of the last N records' ``output.max``.
    """
    if ctx.memory is None:
        ctx.memory = fresh_memory()
    out = state.output
    if out is None:
        _remember(ctx.memory, step, state.record.id, None, 0, 0.0)
    elif out is state.computed and state.argmax is not None:
        _remember(ctx.memory, step, state.record.id, out, state.argmax, state.peak)
    else:
        argmax = int(out.argmax())
        _remember(ctx.memory, step, state.record.id, out, argmax, float(out[argmax]))


def update_memory_batch(ctx: AgentContext, step: Step, batch: BatchState) -> None:
    """`update_memory` for every record of ``batch``, in order."""
    if ctx.memory is None:
        ctx.memory = fresh_memory()
    memory, ids = ctx.memory, batch.block.ids
    if not batch.output:
        for i in batch.alive:
            _remember(memory, step, ids[i], None, 0, 0.0)
        return
    outputs, argmaxes, peaks, alive = batch.computed, batch.argmaxes, batch.peaks, batch.alive
    if step.args:
        for i in alive:
            try:
                _remember(memory, step, ids[i], outputs[i], argmaxes[i], peaks[i])
            except ExecutionError as exc:
                batch.fail(i, exc)
        return
    # `_remember` without arguments, inlined: the same float operations in the same order.
    count, mean, counts = memory["count"], memory["mean_max"], memory["class_counts"]
    keys = [str(k) for k in range(outputs.shape[1])]
    for i in alive:
        count += 1
        mean += (peaks[i] - mean) / count
        key = keys[argmaxes[i]]
        counts[key] = counts.get(key, 0) + 1
    last = alive[-1]
    memory.update(count=count, mean_max=mean, last_id=ids[last], last_output=outputs[last],
                  last_argmax=argmaxes[last], last_max=peaks[last])


def _remember(memory: dict[str, Any], step: Step, rid: Any, out: np.ndarray | None, argmax: int, peak: float) -> None:
    """Fold one record into ``memory``: the one definition of what `update_memory` does per record."""
    memory["count"] += 1
    memory["last_id"] = rid
    if out is None:
        return
    memory["last_output"] = out
    memory["last_argmax"] = argmax
    memory["last_max"] = peak
    window = step_arg(step, "window") if step.args else None
    if window is None:
        memory["mean_max"] += (peak - memory["mean_max"]) / memory["count"]
    else:
        recent = memory.setdefault("recent_max", [])
        recent.append(peak)
        del recent[:-window]
        memory["mean_max"] = sum(recent) / len(recent)
    counts = memory["class_counts"]
    key = str(argmax)
    counts[key] = counts.get(key, 0) + 1


def _output_topic(ctx: AgentContext, step: Step, has_output: bool) -> str | None:
    """Return where send_output publishes, or None when not connected (said once)."""
    topic = ensure_topic(step_arg(step, "topic")) if step.args else STEP_DEFS["send_output"].arguments["topic"].default
    if not has_output:
        raise ExecutionError(
            "no output to send for this record", code="AF5207",
            hint="put process_neural_network before send_output in the execution workflow",
        )
    if not ctx.connected:
        ctx.notice("send_output: not connected to a swarm (no connect_to_swarm): nothing is published")
        return None
    return topic


def send_output(ctx: AgentContext, step: Step, state: RecordState) -> None:
    """Publish the result on ``topic`` (default task.completion); it becomes the output record.

    The result is published once the record's whole workflow has succeeded (a record that fails
    in a later step publishes nothing); the results of a batch travel in one message
    (`afrt.messages.encode_results`).
    """
    topic = _output_topic(ctx, step, state.output is not None)
    if topic is not None:
        state.sent.append(topic)  # the runner publishes it once the record's workflow succeeded


def send_output_batch(ctx: AgentContext, step: Step, batch: BatchState) -> None:
    """`send_output` for every record of ``batch``."""
    topic = _output_topic(ctx, step, batch.output)
    if topic is not None:
        batch.sent.append((topic, list(batch.alive)))  # published for the records that do not fail later


def learner_of(ctx: AgentContext, step: Step) -> Any:
    """Return the replica's `afrt.learner.OnlineLearner`, made at its first use (and given the
    checkpoint's learner state when one was restored)."""
    if ctx.learner is None:
        from .learner import OnlineLearner, learning_options

        agent = ctx.agent
        optimizer, rate, every = learning_options(step, agent.bundle.info.network.learning_rate)
        ctx.learner = OnlineLearner(agent, optimizer=optimizer, learning_rate=rate, every=every)
        if ctx.saved_learner is not None:
            ctx.learner.restore(ctx.saved_learner)
            ctx.saved_learner = None
    return ctx.learner


def _learn(ctx: AgentContext, step: Step, row: np.ndarray, target: Any) -> None:
    """Feed one labelled record to the learner; publish the update it may complete."""
    update = learner_of(ctx, step).add(row, target)
    if update is not None:
        ctx.stats["updates"] += 1
        ctx.publish(TOPIC_UPDATES, {
            "event": "update", "agent": ctx.agent.name, "agent_id": ctx.agent_id, "swarm": ctx.swarm,
            "time": time.time(), "sequence": update.sequence, "examples": update.examples,
            "examples_total": update.examples_total, "loss": update.loss,
            "optimizer": ctx.learner.optimizer_name, "learning_rate": ctx.learner.learning_rate,
            "weights": update.weights,
        })


def update_weights(ctx: AgentContext, step: Step, state: RecordState) -> None:
    """Learn from the record when it carries a ``target`` (online learning, docs/training.md); a record
    without one passes unchanged. Every ``every`` labelled records one optimizer step changes the
    weights of the agent and its replicas, and the update is published on ``neural.updates``."""
    target = state.record.target
    if target is not None:
        _learn(ctx, step, state.vector, target)


def update_weights_batch(ctx: AgentContext, step: Step, batch: BatchState) -> None:
    """`update_weights` for every record of ``batch``, in order (the runner ends a block where an
    update may happen, so later records of a block never ran with older weights)."""
    targets = batch.block.targets
    if targets is None:
        return
    rows = batch.block.array
    for i in batch.alive:
        if targets[i] is not None:
            try:
                _learn(ctx, step, rows[i], targets[i])
            except ExecutionError as exc:
                batch.fail(i, exc)


def save_state(ctx: AgentContext, step: Step, state: RecordState | None) -> None:
    """Write a checkpoint (memory and identity) to the state directory; ``every=N`` per N records.

    In the execution workflow of a swarm that writes outcomes (`af run`), the checkpoint is made
    here (its size checked against ``disk_mb``) and written once the outcomes of the records it
    counts are written, so that a restored memory never counts a record with no output line.
    """
    every = step_arg(step, "every")
    if state is not None and ctx.stats["records"] % every:
        return
    if ctx.state_dir is None:
        ctx.notice("save_state: no --state-dir, nothing is written (the identity is ephemeral)")
        return
    memory = ctx.memory if ctx.memory is not None else fresh_memory()
    memory["checkpoints"] = memory.get("checkpoints", 0) + 1
    payload = {
        "agent": getattr(ctx.agent, "name", None),
        "agent_id": ctx.agent_id,
        "public_key": ctx.identity.public_bytes.hex(),
        "bundle_digest": getattr(ctx.agent, "digest", None),
        "saved_at": time.time(),
        "memory": memory,
        # the weights once they differ from the bundle's (update_weights, Agent.set_weights), exactly
        "weights": _saved_weights(ctx.agent),
        "learner": ctx.learner.state() if ctx.learner is not None else None,
    }
    data = prepare_checkpoint(ctx.state_dir, ctx.identity, payload, max_bytes=ctx.disk_bytes)
    if state is not None and ctx.defer_checkpoints:
        ctx.checkpoints.append(data)
    else:
        commit_checkpoint(ctx.state_dir, data)
    ctx.stats["checkpoints"] += 1


def _saved_weights(agent: Any) -> list[dict[str, Any]] | None:
    if not getattr(agent, "weights_generation", 0):
        return None
    from .weights import encode_layers

    return encode_layers(agent.weights())


def disconnect_from_swarm(ctx: AgentContext, step: Step, state: None) -> None:
    """Leave the swarm: publish ``left`` on agent.lifecycle; later publishing stops."""
    if ctx.connected:
        ctx.publish(TOPIC_LIFECYCLE, lifecycle_event(ctx, "left", records=ctx.stats["records"]))


def cleanup_resources(ctx: AgentContext, step: Step, state: None) -> None:
    """Release the backend (sessions, wasm stores) of this replica."""
    close = getattr(ctx.agent, "close", None)
    if close is not None:
        close()
    ctx.network_ready = False
    ctx.closed = True


#: step name -> implementation
STEPS: Mapping[str, Callable[..., None]] = {
    fn.__name__: fn
    for fn in (
        load_neural_network, initialize_memory, connect_to_swarm, register_capabilities, receive_input,
        process_neural_network, update_memory, send_output, update_weights, save_state, disconnect_from_swarm,
        cleanup_resources,
    )
}
#: step name -> batch form (see `afrt.workflow`); the other steps run record by record
BATCH_STEPS: Mapping[str, Callable[..., None]] = {
    "receive_input": receive_input_batch,
    "process_neural_network": process_neural_network_batch,
    "update_memory": update_memory_batch,
    "send_output": send_output_batch,
    "update_weights": update_weights_batch,
}


def ensure_complete() -> None:
    """Refuse to run when the step table and the implementations disagree (a bug in af).

    Raises:
        InternalError: a step of `afcore.steps.STEP_DEFS` has no implementation, or the reverse.
    """
    if set(STEPS) != set(STEP_DEFS) or not set(BATCH_STEPS) <= set(STEPS):
        from afcore.errors import InternalError

        raise InternalError(f"the step table and the runtime disagree: {sorted(set(STEPS) ^ set(STEP_DEFS))}")


def ensure_known(step: Step) -> None:
    """Raise for a step name the runtime does not implement.

    Raises:
        ExecutionError: AF5203.
    """
    if step.name not in STEPS:
        raise ExecutionError(
            f"unknown step `{step.name}`", code="AF5203",
            hint=f"the steps are: {', '.join(STEPS)}",
        )


def _output_field(out: np.ndarray, name: Any) -> Any:
    if isinstance(name, int):
        return float(out[name]) if -len(out) <= name < len(out) else out[name]
    if name == "max":
        return float(out.max())
    if name == "min":
        return float(out.min())
    if name == "argmax":
        return int(out.argmax())
    if name == "sum":
        return float(out.sum())
    if name == "mean":
        return float(out.mean())
    if name == "size":
        return int(out.size)
    raise KeyError(name)


def resolve_field(ctx: AgentContext, state: RecordState | None, root: str, path: tuple) -> Any:
    """Return the value of a guard field ``input.*``, ``output.*`` or ``memory.*``.

    Raises:
        KeyError/IndexError/TypeError: when the field does not exist (reported as AF5201).
    """
    if root == "memory":
        value: Any = ctx.memory if ctx.memory is not None else fresh_memory()
        for part in path:
            value = value[part]
        return value.tolist() if isinstance(value, np.ndarray) else value
    if state is None:
        raise KeyError(root)
    if root == "output":
        if state.output is None or len(path) != 1:
            raise KeyError(root)
        return _output_field(state.output, path[0])
    if len(path) != 1:
        raise KeyError(root)
    part = path[0]
    if part == "id":
        return state.record.id
    if part in ("size", "line"):
        return len(state.record.values) if part == "size" else state.record.line
    if isinstance(part, int) and state.vector is not None:
        return float(state.vector[part])
    raise KeyError(part)
