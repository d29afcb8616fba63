"""Prometheus metrics of a swarm worker (prometheus-client), served on ``--metrics-port``.

Label names follow Triton's and Ray Serve's: ``swarm``, ``agent``, ``replica``. Latency buckets
reach from 10 µs to 10 s: the client's default buckets start at 5 ms, too coarse for agents whose
records take microseconds. Each worker keeps its metrics in a registry of its own, so that several
workers (or tests) in one process never collide.

| metric | type | labels |
|---|---|---|
| ``af_records_total`` | counter | swarm, agent, replica, outcome (output, error, filtered, dead_letter) |
| ``af_task_latency_seconds`` | histogram | swarm, agent (read from Redis until the results are written) |
| ``af_batch_size`` | histogram | swarm, agent, replica (records per backend call) |
| ``af_queue_lag`` | gauge | swarm, agent, priority (tasks not yet delivered to any worker) |
| ``af_swarm_members`` | gauge | swarm (workers whose heartbeat is alive) |
| ``af_redeliveries_total`` | counter | swarm, agent (tasks claimed from a worker that went quiet) |
| ``af_dead_letters_total`` | counter | swarm, agent (tasks given up after ``max_deliveries``) |
| ``af_reconnects_total`` | counter | swarm (reconnection attempts to Redis) |
| ``af_bus_dropped_total`` | counter | swarm, agent, reason (bus messages ``--admit`` dropped: unsigned, not_admitted, bad_signature, replayed) |
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "WorkerMetrics"]

#: latency buckets in seconds: 10 µs to 10 s, about three per decade
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
#: batch-size buckets: powers of two up to 1024 records
BATCH_BUCKETS = tuple(float(2**i) for i in range(11))


class WorkerMetrics:
    """The metrics of one worker, in a registry of its own.

    Args:
        swarm: the swarm name (label ``swarm``).
        agent: the agent name (label ``agent``).
    """

    def __init__(self, swarm: str, agent: str) -> None:
        self.swarm, self.agent = swarm, agent
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter("af_records", "records by outcome", ["swarm", "agent", "replica", "outcome"],
                               registry=r)
        self.latency = Histogram("af_task_latency_seconds", "time from reading a task to writing its results",
                                 ["swarm", "agent"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("af_batch_size", "records per backend call", ["swarm", "agent", "replica"],
                               buckets=BATCH_BUCKETS, registry=r)
        self.lag = Gauge("af_queue_lag", "tasks not yet delivered to any worker", ["swarm", "agent", "priority"],
                         registry=r)
        self.members = Gauge("af_swarm_members", "workers whose heartbeat is alive", ["swarm"], registry=r)
        self.redeliveries = Counter("af_redeliveries", "tasks claimed from a worker that went quiet",
                                    ["swarm", "agent"], registry=r)
        self.dead_letters = Counter("af_dead_letters", "tasks given up after max_deliveries", ["swarm", "agent"],
                                    registry=r)
        self.reconnects = Counter("af_reconnects", "reconnection attempts to Redis", ["swarm"], registry=r)
        self.bus_dropped = Counter("af_bus_dropped", "bus messages dropped by --admit's verification, by reason",
                                   ["swarm", "agent", "reason"], registry=r)
        self._reconnects_seen = 0
        self._dropped_seen: dict[str, int] = {}
        self.server: Any = None

    def serve(self, port: int, *, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` (a daemon thread of prometheus-client)."""
        result = start_http_server(port, addr=addr, registry=self.registry)
        self.server = result[0] if isinstance(result, tuple) else result

    def close(self) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def count(self, replica: str, outcome: str, n: int) -> None:
        """Count ``n`` records of ``replica`` that came to ``outcome``."""
        if n:
            self.records.labels(self.swarm, self.agent, replica, outcome).inc(n)

    def set_reconnects(self, total: int) -> None:
        """Bring ``af_reconnects_total`` up to the process's count of reconnections."""
        if total > self._reconnects_seen:
            self.reconnects.labels(self.swarm).inc(total - self._reconnects_seen)
            self._reconnects_seen = total

    def set_dropped(self, dropped: dict[str, int]) -> None:
        """Bring ``af_bus_dropped_total`` up to the verifier's counts per reason (`afrt.busauth.Verifier.dropped`)."""
        for reason, total in dropped.items():
            seen = self._dropped_seen.get(reason, 0)
            if total > seen:
                self.bus_dropped.labels(self.swarm, self.agent, reason).inc(total - seen)
                self._dropped_seen[reason] = total

    def text(self) -> bytes:
        """Return the metrics in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)
