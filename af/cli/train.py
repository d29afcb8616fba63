"""`af train`: train an agent's network and write the weights into its .af (docs/cli.md, `af train`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import click

from ._app import command
from ._output import emit, say

#: the optimizers `--optimizer` takes (afc.train.OPTIMIZERS: a test holds them equal)
OPTIMIZERS = ("sgd", "adam", "rprop")


@command("train")
@click.argument("path", metavar="PATH", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path),
              help="Train on this file (.safetensors with inputs/targets, .jsonl records, FANN .data) "
                   "instead of the file's training_data section.")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1), help="Passes over the data.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Records per update  [default: 32 for sgd and adam, all of them for rprop]")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(OPTIMIZERS), help="How weights move.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True),
              help="Step size  [default: the header's learning_rate]")
@click.option("--validation-split", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of the records held out to measure validation loss and accuracy.")
@click.option("--seed", type=click.IntRange(min=0), help="Seeds the split and the shuffling: the same seed, the same weights.")
@click.option("--target-loss", type=click.FloatRange(min=0), help="Stop once the (validation) loss is at or below this.")
@click.option("--patience", type=click.IntRange(min=1),
              help="Stop after this many epochs without a better (validation) loss, keeping the best weights.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here instead of replacing PATH in place.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary with the history as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines and no summary (errors still show).")
def train_command(path: Path, *, data: Optional[Path], epochs: int, batch_size: Optional[int], optimizer: str,
                  learning_rate: Optional[float], validation_split: float, seed: Optional[int],
                  target_loss: Optional[float], patience: Optional[int], output: Optional[Path], as_json: bool,
                  quiet: bool) -> None:
    """Train the network an .af file declares and write the new weights into it, atomically.

    The file is written (in place, or to -o) only once training ends and the result validates;
    header comments and key order are kept, `modified` is updated and the `training` field records
    what made the weights. Ctrl-C stops training and leaves the file untouched (exit 130).
    """
    import afc

    from ._files import check_input, check_output, read_head

    check_input(path, ("agent",), "af train")
    if data is not None:
        read_head(data)  # AF0901 for a file that cannot be read; afc.train says what is wrong inside it
    if output is not None:
        check_output(output)
    progress = None if quiet or as_json else _Progress(sys.stderr.isatty())
    try:
        result = afc.train_file(path, data=data, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                                learning_rate=learning_rate, validation_split=validation_split, seed=seed,
                                target_loss=target_loss, patience=patience, output=output, progress=progress)
    except KeyboardInterrupt:
        say(f"\ninterrupted: {path} is untouched")
        raise
    if as_json:
        emit(json.dumps(result.to_json(), indent=2, sort_keys=True))
    elif not quiet:
        _summary(result)


class _Progress:
    """One line per epoch: redrawn in place on a terminal, every tenth epoch (and the last) otherwise."""

    def __init__(self, terminal: bool) -> None:
        self.terminal = terminal

    def __call__(self, stats: Any) -> None:
        line = _epoch_line(stats)
        if self.terminal:
            sys.stderr.write("\r\x1b[K" + line + ("\n" if stats.epoch == stats.epochs else ""))
            sys.stderr.flush()
        elif stats.epoch == 1 or stats.epoch % 10 == 0 or stats.epoch == stats.epochs:
            say(line)


def _epoch_line(stats: Any) -> str:
    parts = [f"epoch {stats.epoch}/{stats.epochs}", f"loss {stats.loss:.4g}"]
    if stats.val_loss is not None:
        parts.append(f"val_loss {stats.val_loss:.4g}")
    if stats.val_accuracy is not None:
        parts.append(f"val_accuracy {stats.val_accuracy:.1%}")
    parts.append(f"{stats.samples_per_second:,.0f} samples/s")
    return ", ".join(parts)


def _summary(result: Any) -> None:
    record = result.header_record()
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    said = f"trained {result.path}: {result.epochs} epochs of {record['optimizer']}, loss {result.loss:.4g}"
    if result.val_accuracy is not None:
        said += f", validation accuracy {result.val_accuracy:.1%}"
    say(f"{said} (stopped: {result.stopped}; seed {result.seed}; data sha256 {record['data_sha256'][:12]})")
