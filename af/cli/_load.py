"""What `af run`, `af profile` and `af debug` share: open the streams, load the agent, run the input.

Heavy modules (afrt, afc, onnxruntime, wasmtime) are imported inside the functions, so that
importing the command modules stays cheap for `af --help`.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import asyncio

    from afrt import RunSummary

#: the backends the run-like commands accept
BACKENDS = ("onnx", "wasm")
#: most replicas one process runs: each is an agent with its own task, memory and identity
MAX_REPLICAS = 10_000


def ensure_backend(backend: str) -> None:
    """Check a ``--backend`` value.

    Raises:
        UsageError: AF0933 for anything but ``onnx`` or ``wasm``.
    """
    from afcore.errors import UsageError

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend `{backend}`", code="AF0933", hint="use --backend onnx or --backend wasm")


def open_stream(path: str, mode: str, std: Any) -> IO[bytes]:
    """Open ``path`` in binary ``mode``; ``-`` means ``std`` (stdin or stdout).

    Raises:
        UsageError: AF0934 when the file cannot be opened.
    """
    from afcore.errors import UsageError

    if path == "-":
        return std.buffer
    try:
        return open(path, mode)  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        kind = "input" if "r" in mode else "output"
        raise UsageError(f"cannot open the {kind} `{path}`: {exc.strerror}", code="AF0934") from None


def load_agent(bundle: Path, backend: str, fuel: Optional[int] = None) -> Any:
    """Load a bundle, or compile an .af file in memory first (like `go run`: nothing is written).

    Args:
        bundle: an .afb, or an .af file.
        backend: ``onnx`` or ``wasm``.
        fuel: wasm fuel per record (None: derived from the network's size).

    Returns:
        The `afrt.Agent`.

    Raises:
        AfError: the file does not compile, or the bundle cannot be loaded.
    """
    if bundle.suffix == ".af":
        import afrt
        from afc import load_agent_file
        from afc.compile import compile_agent

        targets = ("onnx",) if backend == "onnx" else ("onnx", "wasm")
        data = compile_agent(load_agent_file(bundle).spec(), targets=targets)
        return afrt.load(data, backend=backend, fuel_per_record=fuel)
    read = _read_ahead(bundle)
    import afrt

    return afrt.load(read(), backend=backend, fuel_per_record=fuel)


def _read_ahead(path: Path) -> Callable[[], Any]:
    """Start reading and verifying the bundle at ``path`` on a thread; return a function that waits for it.

    Decompressing and hashing a bundle (zstd and sha256, which release the GIL) then overlaps
    with importing afrt, numpy and onnxruntime, which `af run` pays anyway: ~20 ms of start-up for
    the example bundle on a 2-core machine. The function returns the `afcore.bundle.Bundle`
    (what `afrt.load` reads from a path, with the same size cap) or raises what reading raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    from afcore.bundle import read_bundle

    pool = ThreadPoolExecutor(1, thread_name_prefix="af-read-bundle")
    future = pool.submit(read_bundle, path)
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
    import signal

    import sys

    from afrt import RunOptions, RunProgress, run_jsonl

    from ._progress import show_progress

    # Interpreter shutdown would run a full collection over every object the run left behind
    # (~60 ms for `af run`, a tenth of a 20k-record run); frozen objects are left to the OS.
    # Files are closed explicitly before (close_streams); at exit this only skips that scan.
    atexit.register(gc.freeze)

    async def main() -> RunSummary:
        stop = asyncio.Event()
        if on_start is not None:
            on_start(stop)
        caught: list[str] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, lambda s=sig: (caught.append(s.name), stop.set()))
            except (RuntimeError, ValueError):  # not the main thread: no handlers, Ctrl-C still ends it
                pass
        counters = RunProgress() if progress else None
        drawing = asyncio.ensure_future(show_progress(counters, sys.stderr)) if counters is not None else None
        try:
            summary = await run_jsonl(agent, source, sink, RunOptions(progress=counters, **options), stop=stop)
        finally:
            if drawing is not None:
                drawing.cancel()
                await asyncio.gather(drawing, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if caught:
            summary.interrupted = caught[0]
        return summary

    return asyncio.run(main())


def close_streams(*streams: Optional[IO[bytes]]) -> None:
    """Close the given streams, except None and the process's own stdin/stdout."""
    import sys

    for stream in streams:
        if stream is not None and stream not in (sys.stdin.buffer, sys.stdout.buffer):
            stream.close()
