"""Checks of `neural_config` that are not errors: what the network will cost, and an output that cannot vary.

Both read only the header, so they speak before any section is decoded, and only about nodes that
pass the schema (``valid``, as the checks of `afc.check`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from afcore.diagnostics import Diagnostic

if TYPE_CHECKING:
    from .yamlload import YamlDocument

__all__ = ["LARGE_NETWORK_BYTES", "check_network_size", "check_output_activation", "declared_parameters"]

#: networks whose float32 parameters take at least this many bytes get a note with their size
LARGE_NETWORK_BYTES = 256 * 1024**2

_SIZE_KEYS = ("input_size", "hidden_layers", "output_size")


def _all_valid(path: tuple) -> bool:
    return True


def declared_parameters(document: YamlDocument, *, valid: Callable[[tuple], bool] = _all_valid) -> int | None:
    """Return how many weights and biases `neural_config` declares, or None when its sizes are not sound.

    Args:
        document: the parsed header.
        valid: tells whether a header node satisfies the schema (`afc.validate.SchemaReport.is_valid`).
    """
    config = document.data.get("neural_config") if isinstance(document.data, dict) else None
    if not isinstance(config, dict) or any(k not in config or not valid(("neural_config", k)) for k in _SIZE_KEYS):
        return None
    sizes = [int(size) for size in (config["input_size"], *config["hidden_layers"], config["output_size"])]
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes, sizes[1:]))


def check_network_size(document: YamlDocument, *, valid: Callable[[tuple], bool] = _all_valid) -> list[Diagnostic]:
    """Say how big a large network is, before its weights are decoded (issue 9, point 13).

    Args:
        document: the parsed header.
        valid: as `declared_parameters`.

    Returns:
        AF2011 (a note) when the float32 parameters take at least `LARGE_NETWORK_BYTES`.
    """
    parameters = declared_parameters(document, valid=valid)
    if parameters is None or 4 * parameters < LARGE_NETWORK_BYTES:
        return []
    size = _binary_size(4 * parameters)
    return [Diagnostic("AF2011", "note", f"`neural_config` declares {parameters:,} parameters: {size} of float32",
                       span=document.span_of(("neural_config",), part="key"),
                       help=f"checking the file needs about {size} of memory, compiling and running it more; "
                       "if the network is not meant to be this large, check the layer sizes")]


def check_output_activation(document: YamlDocument, *, valid: Callable[[tuple], bool] = _all_valid) -> list[Diagnostic]:
    """Warn about a softmax over a single output, which is 1.0 whatever the input.

    Args:
        document: the parsed header.
        valid: as `declared_parameters`.

    Returns:
        AF2012 (a warning) for ``output_size: 1`` with ``output_activation: softmax``.
    """
    config = document.data.get("neural_config") if isinstance(document.data, dict) else None
    paths = (("neural_config", "output_size"), ("neural_config", "output_activation"))
    if not isinstance(config, dict) or not all(p[1] in config and valid(p) for p in paths):
        return []
    if config["output_size"] != 1 or config["output_activation"] != "softmax":
        return []
    return [Diagnostic("AF2012", "warning", "softmax over one output always gives 1.0",
                       span=document.span_of(paths[1]), label="with `output_size: 1`",
                       help="use `output_activation: sigmoid` for a probability, or `linear` for a score")]


def _binary_size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
