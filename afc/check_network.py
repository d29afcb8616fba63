"""Checks of `neural_config` that are not errors: what the network will cost, and an output that cannot vary.

Both read only the header, so they speak before any section is decoded, and only about nodes that
pass the schema (``valid``, as the checks of `afc.check`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable

from afcore.diagnostics import Diagnostic

if TYPE_CHECKING:
    from .yamlload import YamlDocument

__all__ = [
    "LARGE_NETWORK_BYTES",
    "check_backends",
    "check_network_size",
    "check_output_activation",
    "declared_parameters",
]

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


def check_backends(document: YamlDocument, *, valid: Callable[[tuple], bool] = _all_valid) -> list[Diagnostic]:
    """Say, from the header alone, when a backend cannot hold the network or its sandbox cannot start it.

    `af compile` lowers to ONNX and WebAssembly by default; each has a hard size limit (protobuf's
    2 GiB, wasm32's 4 GiB of linear memory), and the wasm sandbox refuses a module whose memory is
    more than `resources.limits.memory_mb`. The same functions as the backends' decide.

    Args:
        document: the parsed header.
        valid: as `declared_parameters`.

    Returns:
        AF2013 (warning) too big for ONNX, AF2014 (warning) too big for WebAssembly, an error AF2014
        when neither backend can hold it, AF2015 (warning) wasm memory above ``memory_mb``.
    """
    from .compile import WASM_MAX_BATCH
    from .spec import ONNX_MAX_MODEL_BYTES, onnx_model_bytes

    parameters = declared_parameters(document, valid=valid)
    network = _shape_network(document, valid) if parameters is not None else None
    if parameters is None or network is None:
        return []
    span = document.span_of(("neural_config",), part="key")
    out = []
    onnx_too_big = onnx_model_bytes(parameters) > ONNX_MAX_MODEL_BYTES
    if onnx_too_big:
        out.append(Diagnostic("AF2013", "warning", f"the network's {_binary_size(4 * parameters)} of float32 is "
                              "more than an ONNX model can hold (2 GiB)", span=span,
                              help="`af compile` needs `--target wasm` for it; or use a smaller network"))
    pages = _wasm_pages(network, WASM_MAX_BATCH)
    if pages is None:
        hint = ("wasm32 memory is at most 4 GiB and an ONNX model 2 GiB: no backend can hold it; use a smaller "
                "network") if onnx_too_big else "`af compile` needs `--target onnx` for it; or use a smaller network"
        out.append(Diagnostic("AF2014", "error" if onnx_too_big else "warning",
                              f"the network needs more than 4 GiB of WebAssembly memory at batch {WASM_MAX_BATCH}",
                              span=span, help=hint))
        return out
    out += _check_memory_limit(document, valid, pages * 65536)
    return out


def _shape_network(document: YamlDocument, valid: Callable[[tuple], bool]) -> Any:
    """A stand-in for `afc.spec.NetworkSpec` with the sizes and activations only (no weights yet)."""
    config = document.data["neural_config"]
    if "activation_function" not in config:
        return None
    if any(not valid(("neural_config", key)) for key in ("activation_function", "output_activation")):
        return None
    sizes = [int(size) for size in (config["input_size"], *config["hidden_layers"], config["output_size"])]
    layers = tuple(SimpleNamespace(index=i, in_size=a, out_size=b) for i, (a, b) in enumerate(zip(sizes, sizes[1:])))
    return SimpleNamespace(input_size=sizes[0], output_size=sizes[-1], layers=layers,
                           hidden_activation=config["activation_function"],
                           output_activation=config.get("output_activation", "linear"),
                           # the memory plan reserves the normalisation's values when there is one
                           input_mean=True if "input_normalization" in config else None)


def _wasm_pages(network: Any, max_batch: int) -> int | None:
    from afcore.errors import LoweringError

    from .lower_wasm import plan_memory_pages

    try:
        return plan_memory_pages(network, max_batch=max_batch)
    except LoweringError:
        return None


def _check_memory_limit(document: YamlDocument, valid: Callable[[tuple], bool], needed: int) -> list[Diagnostic]:
    resources = document.data.get("resources")
    limits = resources.get("limits") if isinstance(resources, dict) else None
    path = ("resources", "limits", "memory_mb")
    if not isinstance(limits, dict) or "memory_mb" not in limits or not valid(path):
        return []
    if needed <= limits["memory_mb"] * 2**20:
        return []
    wanted = -(-needed // 2**20)
    return [Diagnostic("AF2015", "warning", f"the WebAssembly module starts with {wanted:,} MiB of memory, more than "
                       f"`memory_mb` ({limits['memory_mb']})", span=document.span_of(path),
                       label="the wasm sandbox's memory cap",
                       help=f"`af run --backend wasm` would refuse to start (AF5012): raise `memory_mb` to at "
                       f"least {wanted}, or run on the onnx backend")]


def _binary_size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
