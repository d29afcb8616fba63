"""FANN ``.net`` files (FANN_FLO_2.1, as libfann 2.2 saves and loads them), both ways.

A FANN network is a list of layers whose sizes count a bias neuron at the end of each layer (the
output layer's too), then one ``(num_inputs, activation_function, activation_steepness)`` triple
per neuron and, for each neuron that has inputs, its ``(connected_to_neuron, weight)`` pairs. The
bias neuron outputs 1. ``fann_run`` computes ``s * sum`` (``s`` the neuron's steepness) and applies
the activation to it; FANN's sigmoid is ``1/(1+exp(-2x))`` and its symmetric sigmoid ``tanh(x)``.
af folds the steepness (and that factor 2) into the weights, so the function is the same:

========================  =====================  ===================================
FANN activation (code)    af activation          weight factor on import (export: 1/f)
========================  =====================  ===================================
FANN_LINEAR (0)           linear                 s         (export: s = 1)
FANN_SIGMOID (3)          sigmoid                2 s       (export: s = 0.5)
FANN_SIGMOID_SYMMETRIC    tanh (hidden only)     s         (export: s = 1)
(5)
========================  =====================  ===================================

Other FANN activations, shortcut networks and sparse ones are refused on import (AF6061); af
activations libfann 2.2 lacks (relu and the rest, softmax) are refused on export (AF6065).
``fann_run`` also clips ``s * sum`` to +-150/s, which changes nothing a float32 sigmoid can show.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from afcore.errors import LoweringError

from .interop import ImportedNetwork, fail

if TYPE_CHECKING:
    from .spec import NetworkSpec

__all__ = ["FANN_ACTIVATIONS", "export_fann", "read_fann", "write_fann"]

#: FANN activation code -> (af activation, factor folded into the weights besides the steepness)
FANN_ACTIVATIONS = {0: ("linear", 1.0), 3: ("sigmoid", 2.0), 5: ("tanh", 1.0)}
#: af activation -> (FANN activation code, steepness written on export)
_EXPORT = {"linear": (0, 1.0), "sigmoid": (3, 0.5), "tanh": (5, 1.0)}
#: FANN's names of its activation codes (fann_activationfunc_enum), for diagnostics
_FANN_NAMES = ("FANN_LINEAR", "FANN_THRESHOLD", "FANN_THRESHOLD_SYMMETRIC", "FANN_SIGMOID", "FANN_SIGMOID_STEPWISE",
               "FANN_SIGMOID_SYMMETRIC", "FANN_SIGMOID_SYMMETRIC_STEPWISE", "FANN_GAUSSIAN", "FANN_GAUSSIAN_SYMMETRIC",
               "FANN_GAUSSIAN_STEPWISE", "FANN_ELLIOT", "FANN_ELLIOT_SYMMETRIC", "FANN_LINEAR_PIECE",
               "FANN_LINEAR_PIECE_SYMMETRIC", "FANN_SIN_SYMMETRIC", "FANN_COS_SYMMETRIC", "FANN_SIN", "FANN_COS")
_MAGIC = "FANN_FLO_2.1"
_PAIR = re.compile(r"\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*(?:,\s*([^,()]+?)\s*)?\)")


def read_fann(data: bytes, *, path: str) -> ImportedNetwork:
    """Read a FANN_FLO_2.1 ``.net`` file.

    Args:
        data: the file's bytes.
        path: the file, for diagnostics.

    Returns:
        The network, steepness folded into the weights. Input scaling parameters a file may carry
        (``scale_included=1``) are not read: ``fann_run`` does not apply them either.

    Raises:
        CheckError: AF6060 for a malformed file (naming the line), AF6061 for a network af cannot map
            (shortcut or sparse connections, an activation af lacks, mixed activations in a layer).
    """
    fields = _fields(data, path)
    sizes = _ints(fields, "layer_sizes", path)
    if fields.get("network_type", "0") != "0":
        fail("AF6061", f"`{path}` is a shortcut network (network_type={fields['network_type']})",
             "af imports layered networks (fann_create_standard)")
    try:
        neurons = [(int(a), int(b), float(c)) for a, b, c in _triples(fields, "neurons", path)]
        connections = [(int(a), float(b)) for a, b, _ in _triples(fields, "connections", path)]
    except ValueError:
        fail("AF6060", f"`{path}` lists a neuron or a connection whose index or activation is not an integer",
             "save the network again with libfann")
    if len(sizes) < 2 or any(size < 2 for size in sizes) or len(neurons) != sum(sizes):
        fail("AF6060", f"`{path}` declares layer_sizes {sizes} and {len(neurons)} neurons",
             "each layer counts its bias neuron; the neuron list has one entry per neuron")
    weights, biases, activations = [], [], []
    first, used = 0, 0
    for layer, size in enumerate(sizes[1:], start=1):
        previous = sizes[layer - 1]
        start = sum(sizes[:layer])
        w, b, names = _layer(neurons[start:start + size - 1], connections, used, first, previous, layer, path)
        used += (size - 1) * previous
        weights.append(w)
        biases.append(b)
        activations.append(names)
        first = start
    if used != len(connections):
        fail("AF6060", f"`{path}` holds {len(connections)} connections; its layers use {used}",
             "save the network again with libfann")
    hidden, output = _activations(activations, path)
    return ImportedNetwork(tuple(weights), tuple(biases), hidden, output, source=f"FANN ({path.rsplit('/', 1)[-1]})")


def _fields(data: bytes, path: str) -> dict[str, str]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        fail("AF6060", f"`{path}` is not a text file (byte {exc.start})", "a FANN .net file is ASCII text")
    lines = text.splitlines()
    if not lines or lines[0].strip() != _MAGIC:
        found = lines[0].strip()[:40] if lines else ""
        fail("AF6060", f"`{path}` starts with `{found}`, not `{_MAGIC}`",
             "af reads floating-point FANN files of version 2.1 (libfann 2.x `fann_save`)")
    fields = {}
    for line in lines[1:]:
        key, sep, value = line.partition("=")
        if sep:
            fields[key.split(" (")[0].strip()] = value
    return fields


def _ints(fields: dict[str, str], key: str, path: str) -> list[int]:
    if key not in fields:
        fail("AF6060", f"`{path}` has no `{key}` line", "save the network again with libfann")
    try:
        return [int(token) for token in fields[key].split()]
    except ValueError:
        fail("AF6060", f"`{key}` of `{path}` is not a list of integers", "save the network again with libfann")


def _triples(fields: dict[str, str], key: str, path: str) -> list[tuple[str, str, Any]]:
    if key not in fields:
        fail("AF6060", f"`{path}` has no `{key}` line", "save the network again with libfann")
    text = fields[key]
    found = _PAIR.findall(text)
    try:
        [float(x) for triple in found for x in triple if x]
    except ValueError:
        fail("AF6060", f"`{key}` of `{path}` holds something that is not a number", "save the network again with libfann")
    if len(_PAIR.sub("", text).strip()):
        fail("AF6060", f"`{key}` of `{path}` holds text that is not a list of tuples",
             "save the network again with libfann")
    return found


def _layer(neurons: list[tuple[int, int, float]], connections: list[tuple[int, float]], used: int, first: int,
           previous: int, layer: int, path: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One layer's weights [out, in] and bias from its neurons' connections (all to the previous layer)."""
    weight, bias = np.zeros((len(neurons), previous - 1)), np.zeros(len(neurons))
    codes = []
    for j, (num_inputs, code, steepness) in enumerate(neurons):
        if num_inputs != previous:
            fail("AF6061", f"neuron {j} of layer {layer} of `{path}` has {num_inputs} inputs, not the {previous} "
                           "of the layer before", "af imports fully connected networks (connection_rate 1)")
        if code not in FANN_ACTIVATIONS:
            name = _FANN_NAMES[code] if 0 <= code < len(_FANN_NAMES) else str(code)
            fail("AF6061", f"neuron {j} of layer {layer} of `{path}` uses {name}, which af has no activation for",
                 "af maps FANN_LINEAR, FANN_SIGMOID and FANN_SIGMOID_SYMMETRIC")
        factor = FANN_ACTIVATIONS[code][1] * steepness
        row = connections[used + j * previous: used + (j + 1) * previous]
        targets = [target for target, _ in row]
        if targets != list(range(first, first + previous)):
            fail("AF6061", f"neuron {j} of layer {layer} of `{path}` is not connected to each neuron of the layer "
                           "before, in order", "af imports fully connected layered networks")
        weight[j] = [w * factor for _, w in row[:-1]]
        bias[j] = row[-1][1] * factor
        codes.append(code)
    return weight, bias, codes


def _activations(layers: list[list[int]], path: str) -> tuple[str, str]:
    names = []
    for number, codes in enumerate(layers, start=1):
        if len(set(codes)) != 1:
            fail("AF6061", f"layer {number} of `{path}` mixes activation functions",
                 "af applies one activation per layer")
        names.append(FANN_ACTIVATIONS[codes[0]][0])
    hidden = names[:-1]
    if len(set(hidden)) > 1:
        fail("AF6061", f"the hidden layers of `{path}` use different activations ({', '.join(hidden)})",
             "af uses one activation for every hidden layer")
    if names[-1] not in ("sigmoid", "linear"):
        fail("AF6061", f"the output layer of `{path}` uses FANN_SIGMOID_SYMMETRIC (tanh)",
             "af's output activation is sigmoid, softmax or linear: train with FANN_SIGMOID or FANN_LINEAR outputs")
    return (hidden[0] if hidden else "relu"), names[-1]


def export_fann(network: NetworkSpec) -> str:
    """Return the FANN_FLO_2.1 text of a network (see `write_fann`), its input normalisation folded in.

    FANN's own input scaling (``fann_scale_input``) is not applied by ``fann_run``, so the
    normalisation becomes part of the first layer: ``W ((x - m) / s) + b = (W / s) x + (b - (W / s) m)``,
    computed in float64. Class labels have no place in a .net file and are left out.

    Raises:
        LoweringError: AF6065 for an activation libfann 2.2 lacks.
    """
    if not network.normalized:
        return write_fann(network)
    weights = [np.asarray(layer.weight, np.float64) for layer in network.layers]
    biases = [np.asarray(layer.bias, np.float64) for layer in network.layers]
    weights[0] = weights[0] / np.asarray(network.input_scale, np.float64)[None, :]
    biases[0] = biases[0] - weights[0] @ np.asarray(network.input_mean, np.float64)
    return write_fann(network, weights=weights, biases=biases)


def write_fann(network: NetworkSpec, *, weights: list[np.ndarray] | None = None,
               biases: list[np.ndarray] | None = None) -> str:
    """Return the FANN_FLO_2.1 text of a network, as libfann 2.2's ``fann_save`` writes it.

    Args:
        network: the network (its activations and learning rate).
        weights, biases: the layers to write instead of the network's own (an input normalisation
            folded into the first one), float ``[out, in]`` and ``[out]``.

    Returns:
        The file's text; ``fann_create_from_file`` loads it and ``fann_run`` computes what af computes.

    Raises:
        LoweringError: AF6065 for an activation libfann 2.2 lacks (relu, leaky_relu, elu, gelu,
            softplus; softmax at the output).
    """
    weights = weights if weights is not None else [layer.weight for layer in network.layers]
    biases = biases if biases is not None else [layer.bias for layer in network.layers]
    last = len(weights) - 1
    codes = []
    for i in range(len(weights)):
        name = network.output_activation if i == last else network.hidden_activation
        if name not in _EXPORT:
            where = "output layer" if i == last else "hidden layers"
            raise LoweringError(f"libfann 2.2 has no `{name}` activation (the network's {where})", code="AF6065",
                                hint="FANN holds linear, sigmoid and tanh (tanh in hidden layers); "
                                     "retrain with one of them to export to FANN")
        codes.append(_EXPORT[name])
    sizes = [int(weights[0].shape[1]) + 1, *(int(w.shape[0]) + 1 for w in weights)]
    neurons = ["(0, 0, 0.00000000000000000000e+00) " * sizes[0]]
    connections, first = [], 0
    for i, (w, b) in enumerate(zip(weights, biases)):
        code, steepness = codes[i]
        factor = steepness * FANN_ACTIVATIONS[code][1]
        rows = np.concatenate([np.asarray(w, np.float64), np.asarray(b, np.float64)[:, None]], axis=1) / factor
        neurons.append(f"({rows.shape[1]}, {code}, {steepness:.20e}) " * rows.shape[0])
        neurons.append(f"(0, {code}, 0.00000000000000000000e+00) ")
        connections += [f"({first + k}, {value:.20e}) " for row in rows for k, value in enumerate(row)]
        first += sizes[i]
    learning_rate = network.learning_rate if network.learning_rate is not None else 0.7
    return _HEADER.format(layers=len(sizes), learning_rate=learning_rate) + (
        f"layer_sizes={' '.join(map(str, sizes))} \nscale_included=0\n"
        f"neurons (num_inputs, activation_function, activation_steepness)={''.join(neurons)}\n"
        f"connections (connected_to_neuron, weight)={''.join(connections)}\n")


#: what libfann 2.2's fann_save writes before the layers (its defaults; fann_create_from_file reads each line)
_HEADER = """\
FANN_FLO_2.1
num_layers={layers}
learning_rate={learning_rate:.6f}
connection_rate=1.000000
network_type=0
learning_momentum=0.000000
training_algorithm=2
train_error_function=1
train_stop_function=0
cascade_output_change_fraction=0.010000
quickprop_decay=-0.000100
quickprop_mu=1.750000
rprop_increase_factor=1.200000
rprop_decrease_factor=0.500000
rprop_delta_min=0.000000
rprop_delta_max=50.000000
rprop_delta_zero=0.100000
cascade_output_stagnation_epochs=12
cascade_candidate_change_fraction=0.010000
cascade_candidate_stagnation_epochs=12
cascade_max_out_epochs=150
cascade_min_out_epochs=50
cascade_max_cand_epochs=150
cascade_min_cand_epochs=50
cascade_num_candidate_groups=2
bit_fail_limit=3.49999999999999977796e-01
cascade_candidate_limit=1.00000000000000000000e+03
cascade_weight_multiplier=4.00000000000000022204e-01
cascade_activation_functions_count=10
cascade_activation_functions=3 5 7 8 10 11 14 15 16 17 \ncascade_activation_steepnesses_count=4
cascade_activation_steepnesses=2.50000000000000000000e-01 5.00000000000000000000e-01 \
7.50000000000000000000e-01 1.00000000000000000000e+00 \n"""
