"""What agents publish on the bus, encoded once where it is published (`WorkflowRunner.flush`).

Lifecycle events (``agent.lifecycle``: joined, capabilities, heartbeat, left) are JSON objects;
results (``task.completion`` or a `send_output` topic) travel in the compact form of
`encode_results`. Steps queue events as plain dicts and never encode.
"""

from __future__ import annotations

from typing import Any

import orjson

from .records import encode_results as encode_results

__all__ = ["encode_event", "encode_results"]


def encode_event(event: dict[str, Any]) -> bytes:
    """Return the bus payload of a lifecycle event."""
    return orjson.dumps(event)
