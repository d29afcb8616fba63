"""The ONNX backend: checks a bundle's model and wraps one onnxruntime `InferenceSession`.

The model is inspected before onnxruntime sees it (`afrt._onnxproto.ensure_safe_onnx`, re-exported
here): a model may not refer to external data files (onnxruntime would open them) nor use operators
outside the standard domain (they need native custom-op libraries). The session is created once per loaded bundle and shared by all
replicas: ``InferenceSession.run`` is thread-safe and releases the GIL.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from afcore.errors import BundleError

from ._errormap import OnnxCallErrors, map_onnx_load_errors
from ._onnxproto import ALLOWED_DOMAINS, ensure_safe_onnx, ensure_safe_onnx_file

if TYPE_CHECKING:
    from .weights import Layers

__all__ = ["ALLOWED_DOMAINS", "OnnxModel", "available_cores", "ensure_safe_onnx", "ensure_safe_onnx_file",
           "session_threads", "threads_notice"]



def available_cores() -> int:
    """Return the CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def session_threads(cpu_cores: float | None, threads: int | None = None) -> int:
    """Return onnxruntime's ``intra_op_num_threads``: ``threads`` if given, else ``ceil(cpu_cores)``,
    at least 1 and at most `available_cores` (``cpu_cores: 5000`` once made a one-record run spend a
    minute creating threads, and 2**31 crashed onnxruntime's session setup).

    Args:
        cpu_cores: ``resources.limits.cpu_cores`` of the manifest (None when absent).
        threads: an explicit override (`afrt.load(threads=...)`).
    """
    return min(_wanted_threads(cpu_cores, threads), available_cores())


def threads_notice(cpu_cores: float | None, threads: int | None = None) -> str | None:
    """Return a notice when `session_threads` gives fewer threads than asked, None otherwise."""
    wanted, have = _wanted_threads(cpu_cores, threads), available_cores()
    if wanted <= have:
        return None
    asked = f"threads={threads}" if threads is not None else f"resources.limits.cpu_cores {cpu_cores:g}"
    return f"{asked} asks for {wanted:,} inference threads; this machine has {have} CPU(s), so onnxruntime uses {have}"


def _wanted_threads(cpu_cores: float | None, threads: int | None) -> int:
    if threads is not None:
        return max(1, int(threads))
    if not cpu_cores or cpu_cores < 0:
        return 1
    if not math.isfinite(cpu_cores):
        return available_cores() + 1  # "more than there are"
    return max(1, math.ceil(cpu_cores))


class OnnxModel:
    """One onnxruntime session for a bundle's model, shared by the replicas of an agent.

    Args:
        model_bytes: the checked model (see `ensure_safe_onnx`), or the path of a file holding it
            (onnxruntime then reads it itself: no copy of it in Python while it builds the session).
        agent: the agent's name, for errors.
        input_name: the graph input (manifest ``network.input.name``).
        output_name: the graph output (manifest ``network.output.name``).
        threads: ``intra_op_num_threads`` (see `session_threads`).

    Raises:
        BundleError: AF5043 when onnxruntime refuses the model.
    """

    def __init__(self, model_bytes: bytes | str, *, agent: str, input_name: str, output_name: str, threads: int,
                 profile_dir: str | None = None) -> None:
        self._model_bytes, self._threads, self._profile_dir = model_bytes, threads, profile_dir
        #: OrtValues of replaced weights: the session reads them, so they live as long as it does
        self._overrides: dict[str, object] = {}
        #: what keeps the file of a path ``model_bytes`` alive (an `afcore.bundle.MemberFile`, removed
        #: with it): the session is made again from that file when the weights change
        self.backing_file: object | None = None
        self.session = self._new_session()
        self._profiling = profile_dir is not None
        #: onnxruntime's node events once profiling ended (`layer_events`)
        self._node_events: list[dict] | None = None
        self.agent = agent
        self.threads = threads
        #: notices of loading (`afrt.agent` sets them, e.g. `threads_notice`)
        self.notices: list[str] = []
        self.input_name, self.output_name = input_name, output_name
        self._outputs = [output_name]
        #: the layer weights the graph also takes as inputs (the model of an agent that learns:
        #: `afc.lower_onnx.lower_network`'s ``weights_as_inputs``); `set_weights` then feeds new values
        #: on every call instead of making a new session
        self.weight_inputs = frozenset(arg.name for arg in self.session.get_overridable_initializers()
                                       if _LAYER_TENSOR.fullmatch(arg.name))
        #: what `run` feeds besides the records: the replaced weights, when the graph takes them
        self._weight_feed: dict[str, np.ndarray] = {}
        self._errors = OnnxCallErrors(agent)

    def _new_session(self) -> object:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: warnings would go to stderr, bypassing diagnostics
        if self._profile_dir is not None:  # onnxruntime's own profiler: the time of every node of every run
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(self._profile_dir, "onnxruntime")
        for name, value in self._overrides.items():
            options.add_initializer(name, value)
        with map_onnx_load_errors("model.onnx"):
            return ort.InferenceSession(self._model_bytes, options, providers=["CPUExecutionProvider"])

    def _initializers(self) -> Any:
        """Return the model's initializers (parsed again on each call: weights are read rarely)."""
        from ._onnxproto import parse_model

        data = self._model_bytes
        if isinstance(data, str):  # a member the bundle reader wrote to a private file (lean loading)
            with open(data, "rb") as handle:
                data = handle.read()
        return parse_model(data).graph.initializer

    def read_weights(self, shapes: Sequence[tuple[int, int]]) -> Layers:
        """Return the weights the model was loaded with: initializers ``layers.<i>.weight``/``.bias``.

        Args:
            shapes: ``(in, out)`` of each layer, from the manifest.

        Raises:
            BundleError: AF6102 when the model lacks them (it was not made by `af compile`).
        """
        found = {t.name: t for t in self._initializers()}
        layers = []
        for index, (n_in, n_out) in enumerate(shapes):
            pair = [_float_tensor(found.get(f"layers.{index}.{part}"), shape)
                    for part, shape in (("weight", (n_out, n_in)), ("bias", (n_out,)))]
            if pair[0] is None or pair[1] is None:
                raise BundleError(
                    f"model.onnx has no float32 initializers `layers.{index}.weight` [{n_out}, {n_in}] and "
                    f"`layers.{index}.bias` [{n_out}]: agent `{self.agent}` cannot replace its weights",
                    code="AF6102", hint="recompile the bundle with `af compile`",
                )
            layers.append((pair[0], pair[1]))
        return layers

    def read_normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the input normalisation ``(mean, scale)`` (initializers ``input.mean``/``input.scale``),
        or None when the model has none."""
        found = {t.name: t for t in self._initializers()}
        if "input.mean" not in found:
            return None
        mean, scale = found["input.mean"], found["input.scale"]
        return _float_tensor(mean, tuple(mean.dims)), _float_tensor(scale, tuple(scale.dims))

    def set_weights(self, layers: Layers) -> None:
        """Make ``layers`` (checked by `afrt.weights.ensure_layers`) the model's weights.

        The model of an agent that learns takes its weights as graph inputs too (`weight_inputs`):
        copies of the new values are fed from the next call on (microseconds; each call costs a few
        µs more than with constant weights, docs/runtime.md). Any other model's session is made again
        with the new values as overriding initializers (``SessionOptions.add_initializer``, 1-2 ms),
        so onnxruntime still pre-packs them as constants and inference runs exactly as fast as
        before: weights that change once a federated round. Calls already running finish with the
        old weights; the next call uses the new ones. Replicas share this model, so all of them see
        the change.

        Raises:
            BundleError: AF5043 when onnxruntime refuses the session (a bug in af).
        """
        names = {f"layers.{index}.{part}": array for index, pair in enumerate(layers)
                 for part, array in zip(("weight", "bias"), pair)}
        if names.keys() <= self.weight_inputs:  # an agent that learns: fed from the next call on, in µs
            self._weight_feed = {name: np.array(array, dtype=np.float32, order="C") for name, array in names.items()}
            return
        import onnxruntime as ort

        overrides = {}
        for index, (weight, bias) in enumerate(layers):
            overrides[f"layers.{index}.weight"] = ort.OrtValue.ortvalue_from_numpy(weight)
            overrides[f"layers.{index}.bias"] = ort.OrtValue.ortvalue_from_numpy(bias)
        previous, self._overrides = self._overrides, overrides
        try:
            session = self._new_session()
        except BaseException:
            self._overrides = previous
            raise
        self.session = session

    def ensure_signature(self, input_size: int, output_size: int) -> None:
        """Check the graph's input and output against the manifest's network signature.

        Raises:
            BundleError: AF5046 on a different name or width.
        """
        for kind, args, name, width in (
            ("input", self.session.get_inputs(), self.input_name, input_size),
            ("output", self.session.get_outputs(), self.output_name, output_size),
        ):
            shapes = {arg.name: arg.shape for arg in args}
            shape = shapes.get(name)
            if len(args) != 1 or shape is None or len(shape) != 2 or shape[1] != width:
                raise BundleError(
                    f"model.onnx's {kind} is {shapes}, but the manifest declares `{name}` with width {width}",
                    code="AF5046",
                    hint="the bundle's members disagree; recompile it with `af compile`",
                )

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run a batch.

        Args:
            inputs: float32 ``[n, input_size]``.

        Returns:
            float32 ``[n, output_size]``.

        Raises:
            InferenceError: AF5033 when onnxruntime fails.
        """
        feed = self._weight_feed
        with self._errors:
            if feed:
                return self.session.run(self._outputs, {self.input_name: inputs, **feed})[0]
            return self.session.run(self._outputs, {self.input_name: inputs})[0]

    def replica(self) -> OnnxModel:
        """Return the model itself: replicas share the session, whose ``run`` is thread-safe."""
        return self

    def layer_events(self) -> tuple[int, list[dict]]:
        """End onnxruntime's profiling (once) and return its start (ns, system clock) and node events.

        Each event is onnxruntime's (``name`` such as ``fused layers.0.gemm_kernel_time``, ``ts`` in
        µs from the start, ``dur`` in µs), with each run's ``model_run`` event among them. Empty when
        the model was loaded without profiling.
        """
        if not self._profiling:
            return 0, []
        if self._node_events is None:
            import json

            path = self.session.end_profiling()
            try:
                with open(path, encoding="utf-8") as handle:
                    events = json.load(handle)
            finally:
                os.unlink(path)
            # the nodes, and each run's whole time (``model_run``, what the nodes add up to)
            self._node_events = [e for e in events if e.get("ph") == "X"
                                 and (e.get("cat") == "Node" or e.get("name") == "model_run")]
        return self.session.get_profiling_start_time_ns(), self._node_events

    def close(self) -> None:
        """End profiling (when on); the session is shared by the replicas and freed with the last reference."""
        self.layer_events()


#: onnx TensorProto.FLOAT
_ONNX_FLOAT = 1
#: the name of a layer's weight or bias (initializer, and graph input when the agent learns)
_LAYER_TENSOR = re.compile(r"layers\.[0-9]+\.(weight|bias)")


def _float_tensor(tensor: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """Return a float32 initializer as a new array of ``shape``, or None when it is not one."""
    if tensor is None or tensor.data_type != _ONNX_FLOAT or tuple(tensor.dims) != shape:
        return None
    if tensor.raw_data:
        values = np.frombuffer(tensor.raw_data, dtype="<f4")
    else:
        values = np.asarray(tensor.float_data, dtype=np.float32)
    if values.size != math.prod(shape):
        return None
    return values.astype(np.float32).reshape(shape)
