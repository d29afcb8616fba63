"""A private redis-server for tests: started on a free loopback port, stopped after use.

Every test that needs Redis starts its own server (`RedisServer`), in a temporary directory, on
127.0.0.1 only, and stops it; nothing touches another Redis.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")

#: servers started by `shared_bus_factory`, stopped at exit
_STARTED: list["RedisServer"] = []


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process on 127.0.0.1.

    Args:
        directory: where it keeps its files (the append-only file with ``appendonly``).
        appendonly: start it with ``--appendonly yes`` (and ``appendfsync always``).
        password: require this password (for the default user).
    """

    def __init__(self, directory: Path | str | None = None, *, appendonly: bool = False,
                 password: str | None = None, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.directory = Path(directory or tempfile.mkdtemp(prefix="af-redis-"))
        self.appendonly, self.password = appendonly, password
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL of the server (with the password, if any)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory),
                "--daemonize", "no", "--loglevel", "warning"]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
                    s.sendall(auth + b"PING\r\n")
                    if b"PONG" in s.recv(100) or (auth and b"PONG" in s.recv(100)):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM: it writes its append-only file and exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, down_seconds: float = 0.5) -> None:
        """Stop the server, wait, and start it again on the same port and directory."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server and return its output."""
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        return subprocess.run(["redis-cli", "-p", str(self.port), *auth, *args], capture_output=True,
                              text=True, timeout=10).stdout

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def redis_bus_factory():
    """The `BUS_FACTORIES` entry of tests/afrt/test_bus.py: a `RedisBus` on a server of its own."""
    from afrt.redisbus import RedisBus

    server = RedisServer().start()
    _STARTED.append(server)
    return RedisBus(server.url, f"contract-{os.getpid()}")


@atexit.register
def _stop_all() -> None:
    for server in _STARTED:
        server.__exit__()
