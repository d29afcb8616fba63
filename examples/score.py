"""Score `af run` results of the classification example against the held-out labels.

    af run build/classification-agent.afb --input examples/classification-inputs.jsonl --output results.jsonl
    python examples/score.py results.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = Path(__file__).with_name("classification-labels.json")


def main(results_path: str) -> int:
    labels = json.loads(LABELS.read_text())
    correct = errors = 0
    with open(results_path, encoding="utf-8") as results:
        records = [json.loads(line) for line in results if line.strip()]
    for record in records:
        if "error" in record:
            errors += 1
            continue
        output = record["output"]
        predicted = max(range(len(output)), key=output.__getitem__)
        correct += predicted == labels[str(record["id"])]
    scored = len(records) - errors
    print(f"{correct}/{scored} held-out digits classified correctly ({correct / max(scored, 1):.1%}), {errors} errors")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/score.py RESULTS.jsonl")
    sys.exit(main(sys.argv[1]))
