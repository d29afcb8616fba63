"""What records come to: the values the workflow runner returns and the swarm hands out.

A block of records run by one replica becomes one `Outcomes`: for each record, in block order,
exactly one of an output (a float32 row), an error (`RecordError`) or a filter (the step whose
guard held the record back on purpose). Nothing here is encoded: `afrt.jsonl` writes outcomes as
JSON Lines at the edge, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

__all__ = ["Outcome", "Outcomes", "RecordError"]


class RecordError(NamedTuple):
    """Why one record failed: its af error code and message."""

    code: str
    message: str


class Outcome(NamedTuple):
    """One record's outcome: exactly one of ``output``, ``error`` and ``filtered`` is set.

    ``filtered`` is the source of the `send_output` step whose guard was false for the record.
    """

    seq: int
    id: Any
    output: np.ndarray | None = None
    error: RecordError | None = None
    filtered: str | None = None
    agent: str | None = None


@dataclass(slots=True)
class Outcomes:
    """The outcomes of a block of records, in block order.

    Args:
        seqs: the records' sequence numbers (increasing, maybe with gaps).
        ids: the records' ids.
        agent: the agent id of the replica that ran them.
        outputs: ``[len, output_size]`` rows; row ``i`` is record ``i``'s output unless ``i`` is in
            ``errors`` or ``filtered`` (None when no record got as far as the backend).
        errors: record index -> why it failed.
        filtered: record index -> the `send_output` step whose guard held it back.
        written: set by whoever writes the outcomes once they are written (None: nobody waits);
            checkpoints made while these records ran are written only then (`afrt.swarm`).
    """

    seqs: list[int]
    ids: list[Any]
    agent: str | None = None
    outputs: np.ndarray | None = None
    errors: dict[int, RecordError] = field(default_factory=dict)
    filtered: dict[int, str] = field(default_factory=dict)
    written: Any = None

    def __len__(self) -> int:
        return len(self.seqs)

    def __iter__(self) -> Iterator[Outcome]:
        errors, filtered, outputs, agent = self.errors, self.filtered, self.outputs, self.agent
        for i, (seq, rid) in enumerate(zip(self.seqs, self.ids)):
            if i in errors:
                yield Outcome(seq, rid, error=errors[i])
            elif i in filtered:
                yield Outcome(seq, rid, filtered=filtered[i])
            else:
                yield Outcome(seq, rid, outputs[i], agent=agent)

    @property
    def all_outputs(self) -> bool:
        """True when every record has an output (the common case: no per-record work at the edge)."""
        return not self.errors and not self.filtered

    def take(self, indices: Sequence[int]) -> Outcomes:
        """Return the outcomes of the records at ``indices`` (increasing), re-indexed."""
        where = {old: new for new, old in enumerate(indices)}
        return Outcomes(
            [self.seqs[i] for i in indices], [self.ids[i] for i in indices], self.agent,
            self.outputs[list(indices)] if self.outputs is not None else None,
            {where[i]: e for i, e in self.errors.items() if i in where},
            {where[i]: f for i, f in self.filtered.items() if i in where},
        )

    @classmethod
    def concat(cls, parts: Sequence[Outcomes]) -> Outcomes:
        """Return the outcomes of consecutive blocks (of one replica) as one, in order."""
        if len(parts) == 1:
            return parts[0]
        seqs, ids, errors, filtered, rows, start = [], [], {}, {}, [], 0
        width = next((p.outputs.shape[1] for p in parts if p.outputs is not None), None)
        for part in parts:
            seqs += part.seqs
            ids += part.ids
            errors.update({start + i: e for i, e in part.errors.items()})
            filtered.update({start + i: f for i, f in part.filtered.items()})
            if width is not None:
                rows.append(part.outputs if part.outputs is not None else np.zeros((len(part), width), np.float32))
            start += len(part)
        outputs = np.concatenate(rows) if width is not None else None
        return cls(seqs, ids, parts[0].agent, outputs, errors, filtered)

    @classmethod
    def failed(cls, seqs: list[int], ids: list[Any], error: RecordError, agent: str | None = None) -> Outcomes:
        """Return outcomes in which every record failed with ``error``."""
        return cls(list(seqs), list(ids), agent, None, dict.fromkeys(range(len(seqs)), error))
