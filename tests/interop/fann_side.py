"""The libfann side of the FANN tests, run by the system python3 (where python3-fann2 installs fann2).

Reads one JSON request on stdin, prints one JSON answer on stdout. Standard library and fann2 only:
the system python has no numpy.

    {"op": "run", "net": PATH, "inputs": [[...], ...]}                      -> {"outputs": [[...], ...]}
    {"op": "train", "data": PATH, "layers": [2, 3, 1], "hidden": "SIGMOID",
     "output": "SIGMOID", "epochs": 200, "save": PATH, "inputs": [[...]]}    -> {"outputs": fann_run after training}
"""

import json
import sys

from fann2 import libfann


def run(ann, inputs):
    return [list(ann.run(list(row))) for row in inputs]


def main():
    request = json.load(sys.stdin)
    ann = libfann.neural_net()
    if request["op"] == "run":
        if not ann.create_from_file(request["net"]):
            raise SystemExit("libfann could not load " + request["net"])
    else:
        ann.create_standard_array(request["layers"])
        ann.set_activation_function_hidden(getattr(libfann, request["hidden"]))
        ann.set_activation_function_output(getattr(libfann, request["output"]))
        ann.set_activation_steepness_hidden(request.get("steepness", 0.5))
        ann.set_activation_steepness_output(request.get("steepness", 0.5))
        data = libfann.training_data()
        data.read_train_from_file(request["data"])
        ann.train_on_data(data, request["epochs"], 0, 0.0)
        ann.save(request["save"])
    json.dump({"outputs": run(ann, request["inputs"])}, sys.stdout)


if __name__ == "__main__":
    main()
