"""What agents publish on the bus, encoded once where it is published (`WorkflowRunner.flush`).

Lifecycle events (``agent.lifecycle``: joined, capabilities, heartbeat, left) are JSON objects;
results (``task.completion`` or a `send_output` topic) travel in the compact form of
`encode_results`; weight updates (``neural.updates``, from `update_weights`) are JSON objects whose
``weights`` are exact float32 in base64 (`encode_update`, docs/runtime.md). Steps queue events as
plain dicts and never encode.
"""

from __future__ import annotations

from typing import Any

import orjson

from .records import encode_results as encode_results

__all__ = ["decode_update", "encode_event", "encode_results", "encode_update"]


def encode_event(event: dict[str, Any]) -> bytes:
    """Return the bus payload of a lifecycle event, or of an update (`encode_update`) when it has ``weights``."""
    if "weights" in event:
        return encode_update(event)
    return orjson.dumps(event)


def encode_update(event: dict[str, Any]) -> bytes:
    """Return the bus payload of a ``neural.updates`` event.

    Its ``weights`` (``(weight [out, in], bias [out])`` per layer, the new weights after the step)
    become ``[{"weight": {"shape", "f32le"}, "bias": {...}}, ...]`` (`afrt.weights.encode_layers`);
    every other field is JSON as it is.
    """
    from .weights import encode_layers

    return orjson.dumps({**event, "weights": encode_layers(event["weights"])})


def decode_update(payload: bytes) -> dict[str, Any]:
    """Return a ``neural.updates`` event with its ``weights`` as float32 arrays again.

    Raises:
        ValueError: when ``payload`` is not such an event (orjson.JSONDecodeError is a ValueError).
    """
    from .weights import decode_layers

    event = orjson.loads(payload)
    if not isinstance(event, dict):
        raise ValueError("an update is a JSON object")
    event["weights"] = decode_layers(event.get("weights"))
    return event
