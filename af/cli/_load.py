"""What `af run`, `af profile` and `af debug` share: open the streams, load the agent, run the input.

Heavy modules (afrt, afc, onnxruntime, wasmtime) are imported inside the functions, so that
importing the command modules stays cheap for `af --help`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Awaitable, Callable, Optional, TypeVar

if TYPE_CHECKING:
    import asyncio

    from afrt import RunSummary

T = TypeVar("T")

#: the backends the run-like commands accept, the first preferred when a bundle has both
BACKENDS = ("onnx", "wasm")
#: most replicas one process runs: each is an agent with its own task, memory and identity
MAX_REPLICAS = 10_000


def agent_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options every command that loads an agent takes: --backend, --fuel, --max-bundle-mb."""
    import click

    for option in reversed((
        click.option("--backend", type=click.Choice(BACKENDS),
                     help="onnx (onnxruntime) or wasm (wasmtime, fuel-metered)  [default: onnx if the bundle has it]"),
        click.option("--fuel", type=click.IntRange(min=1),
                     help="WASM fuel per record, wasm backend only (default: from the network's size)."),
        max_bundle_option,
    )):
        fn = option(fn)
    return fn


def max_bundle_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --max-bundle-mb: how much a bundle may decompress to (afcore.bundle.MAX_TOTAL_BYTES)."""
    import click

    return click.option("--max-bundle-mb", type=click.IntRange(min=1), default=None,
                        help="Refuse a bundle that decompresses to more than this many MiB  [default: 1024]")(fn)


def bundle_cap(max_bundle_mb: Optional[int]) -> int:
    """Return the byte cap on what a bundle may decompress to, from ``--max-bundle-mb``."""
    from afcore.bundle import MAX_TOTAL_BYTES

    return MAX_TOTAL_BYTES if max_bundle_mb is None else max_bundle_mb << 20


def ensure_fuel_applies(backend: Optional[str], fuel: Optional[int]) -> None:
    """Refuse ``--fuel`` with the onnx backend, which meters nothing.

    Raises:
        UsageError: AF0907.
    """
    from afcore.errors import UsageError

    if fuel is not None and backend == "onnx":
        raise UsageError("--fuel applies to the wasm backend only: onnxruntime is not fuel-metered",
                         code="AF0907", hint="add --backend wasm to meter fuel, or drop --fuel")


def open_stream(path: str, mode: str, std: Any) -> IO[bytes]:
    """Open ``path`` in binary ``mode``; ``-`` means ``std`` (stdin or stdout).

    An output's missing parent directories are created (as `af compile -o` does).

    Raises:
        UsageError: AF0934 when the file cannot be opened; AF0905 for an output that is a directory.
    """
    from afcore.errors import UsageError

    from ._files import check_output

    if path == "-":
        return std.buffer
    kind = "input" if "r" in mode else "output"
    if kind == "output":
        check_output(Path(path))
    try:
        return open(path, mode)  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        error = UsageError(f"cannot open the {kind} `{path}`: {exc.strerror}", code="AF0934",
                           hint="check the path and its permissions" if kind == "input"
                           else "check that the directory is writable")
        error.path = path  # type: ignore[attr-defined]
        raise error from None


def load_agent(bundle: Path, backend: Optional[str], fuel: Optional[int] = None, *, command: str = "af run",
               max_bundle_mb: Optional[int] = None, profile_layers: bool = False, trust: tuple[Path, ...] = (),
               state_dir: Optional[Path] = None, lean: bool = False) -> Any:
    """Load a bundle, or compile an .af file in memory first (like `go run`: nothing is written).

    The file's kind is read from its content, not its name.

    Args:
        bundle: an .afb, or an .af file.
        backend: ``onnx`` or ``wasm``; None picks the first of `BACKENDS` the bundle has.
        fuel: wasm fuel per record (None: derived from the network's size).
        command: the command, for messages.
        max_bundle_mb: ``--max-bundle-mb`` (None: the default cap).
        profile_layers: time the layers of every call of the run (`afrt.load`: onnxruntime's profiler on onnx,
            stage by stage on wasm), for `af profile --trace`.
        trust: ``--trust`` public key files: the bundle must be signed by one of them
            (`afcore.signing`), and not older than what ran from ``state_dir``.
        state_dir: ``--state-dir``, where signed versions that ran are recorded (with ``trust``).
        lean: keep only the backend's model, a big ONNX one in a temporary file (`afrt.load`'s
            ``lean``): `af run`, whose agent needs nothing else of the bundle (`af debug` and
            `af profile` read the other members).

    Returns:
        The `afrt.Agent`.

    Raises:
        UsageError: AF0901/AF0904 for a file that is missing or of another kind, AF0907 for
            ``--fuel`` on onnx.
        AfError: the file does not compile, or the bundle cannot be loaded.
    """
    import gc

    from ._files import check_input

    # The one GC measure of `af` (its second half is in `run_stream`): importing afrt, numpy and
    # onnxruntime and loading the bundle make ~50k objects that live until exit and hardly any
    # garbage, so the collections they set off free nothing. Collection is off until the run
    # starts. Measured on `af run` of one record of the example (alternating rounds, 2 vCPUs):
    # see docs/cli.md ("Start-up"). (Compiling an .af in memory makes garbage: it runs collected.)
    ensure_fuel_applies(backend, fuel)
    kind = check_input(bundle, ("agent", "bundle"), command)
    keys = None
    if trust:
        from ._keys import read_trusted_keys, refuse_unsigned_source

        keys = read_trusted_keys(trust)
        if kind == "agent":
            refuse_unsigned_source(bundle)
    if kind == "agent":
        return _compile_and_load(bundle, backend or "onnx", fuel, profile_layers=profile_layers, lean=lean)
    gc.disable()
    read = _read_ahead(bundle, bundle_cap(max_bundle_mb), keys, backend if lean else "")
    import afrt

    loaded = read()
    if backend is None:
        targets = loaded.manifest.get("targets") or BACKENDS
        backend = next((b for b in BACKENDS if b in targets), BACKENDS[0])
        ensure_fuel_applies(backend, fuel)
    return afrt.load(loaded, backend=backend, fuel_per_record=fuel, profile_layers=profile_layers,
                     trust=keys, state_dir=state_dir)


def _compile_and_load(path: Path, backend: str, fuel: Optional[int], *, profile_layers: bool, lean: bool) -> Any:
    """Compile an .af file into a private temporary bundle and load that (`load_agent`).

    The bundle goes to a file rather than memory, and the compiler's arrays are gone before the
    agent loads: a run then costs what compiling costs or what loading the bundle costs, whichever
    is more, not both (docs/runtime.md, "Memory").
    """
    import shutil
    import tempfile

    import afrt
    from afc import compile_spec, load_agent_file

    targets = ("onnx",) if backend == "onnx" else ("onnx", "wasm")
    directory = tempfile.mkdtemp(prefix="af-run-")  # mode 0700: this user's only
    try:
        output = Path(directory) / "agent.afb"
        compile_spec(load_agent_file(path).spec(), output=output, targets=targets)  # its result holds the spec
        # made here and now, from a file that validated: no cap on what it inflates to
        return afrt.load(output, backend=backend, fuel_per_record=fuel, max_total_bytes=sys.maxsize,
                         profile_layers=profile_layers, lean=lean)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _read_ahead(path: Path, max_total_bytes: int, trust: Optional[list] = None,
                lean: Optional[str] = "") -> Callable[[], Any]:
    """Start reading and verifying the bundle at ``path`` on a thread; return a function that waits for it.

    Decompressing and hashing a bundle (zstd and sha256, which release the GIL) then overlaps
    with importing afrt, numpy and onnxruntime, which `af run` pays anyway: ~20 ms of start-up for
    the example bundle on a 2-core machine. The function returns the `afcore.bundle.Bundle`
    (what `afrt.load` reads from a path, with the same size cap) or raises what reading raised.
    With ``trust`` (public keys), the signature is verified there too, before the manifest is read.
    ``lean`` other than "" keeps only the model of that backend (None: the first of `BACKENDS` the
    bundle has), a big one in a temporary file, as `afrt.load`'s ``lean`` does.
    """
    from concurrent.futures import ThreadPoolExecutor

    from afcore.bundle import LARGE_MEMBER_BYTES, read_bundle
    from afcore.manifest import target_keeper

    options: dict[str, Any] = {"max_total_bytes": max_total_bytes}
    if lean != "":
        options.update(keep=target_keeper((lean,) if lean else BACKENDS), spill_over=LARGE_MEMBER_BYTES)
    pool = ThreadPoolExecutor(1, thread_name_prefix="af-read-bundle")
    if trust is not None:
        from afcore.signing import read_signed_bundle

        future = pool.submit(read_signed_bundle, path, trust, **options)
    else:
        future = pool.submit(read_bundle, path, **options)
    pool.shutdown(wait=False)  # the one task still runs; the pool takes no more
    return future.result


def run_stream(agent: Any, source: IO[bytes], sink: Any, *,
               on_start: Optional[Callable[[asyncio.Event], None]] = None, progress: bool = False,
               **options: Any) -> RunSummary:
    """Run ``source`` through a swarm of ``agent`` (`afrt.run_jsonl`), stopping on SIGINT/SIGTERM.

    Args:
        agent: the loaded agent.
        source: JSON Lines input.
        sink: where output records go, or a function that opens it once the agents started.
        on_start: called with the run's stop event before the run starts (a debugger's ``quit``
            sets it).
        progress: draw a progress line on stderr while the run goes (for a terminal).
        options: `afrt.RunOptions` fields.

    Returns:
        The run's summary; ``interrupted`` names the signal that stopped it, if any.
    """
    import asyncio
    import atexit
    import gc
    import sys

    from afrt import RunOptions, RunProgress, run_jsonl

    from ._progress import show_progress

    # The second half of the GC measure (see `load_agent`): what loading made lives until exit, so
    # it is frozen (never scanned again, also not by the collection at interpreter shutdown) and
    # collection comes back on for the run, and stays on for what it makes.
    gc.freeze()
    gc.enable()
    atexit.register(gc.freeze)

    async def main(stop: asyncio.Event) -> RunSummary:
        if on_start is not None:
            on_start(stop)
        counters = RunProgress() if progress else None
        drawing = asyncio.ensure_future(show_progress(counters, sys.stderr)) if counters is not None else None
        try:
            return await run_jsonl(agent, source, sink, RunOptions(progress=counters, **options), stop=stop)
        finally:
            if drawing is not None:
                drawing.cancel()
                await asyncio.gather(drawing, return_exceptions=True)

    summary, caught = run_with_signals(main)
    if caught:
        summary.interrupted = caught
    return summary


def run_with_signals(main: Callable[[asyncio.Event], Awaitable[T]]) -> tuple[T, Optional[str]]:
    """Run ``main(stop)`` in a new event loop, where SIGINT and SIGTERM set ``stop``.

    Returns:
        What ``main`` returned, and the name of the first signal caught (None when none was).
    """
    import asyncio
    import signal

    async def guarded() -> tuple[T, Optional[str]]:
        stop = asyncio.Event()
        caught: list[str] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, lambda s=sig: (caught.append(s.name), stop.set()))
            except (RuntimeError, ValueError):  # not the main thread: no handlers, Ctrl-C still ends it
                pass
        try:
            result = await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return result, (caught[0] if caught else None)

    return asyncio.run(guarded())


def close_streams(*streams: Optional[IO[bytes]]) -> None:
    """Close the given streams, except None and the process's own stdin/stdout."""
    import sys

    for stream in streams:
        if stream is not None and stream not in (sys.stdin.buffer, sys.stdout.buffer):
            stream.close()
