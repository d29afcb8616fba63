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
        tls: serve TLS only (a self-signed certificate made with openssl); the URL is ``rediss://``.
    """

    def __init__(self, directory: Path | str | None = None, *, appendonly: bool = False,
                 password: str | None = None, port: int | None = None, tls: bool = False) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.directory = Path(directory or tempfile.mkdtemp(prefix="af-redis-"))
        self.appendonly, self.password, self.tls = appendonly, password, tls
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL of the server (with the password, if any)."""
        return self.url_for(None, self.password)

    def url_for(self, user: str | None, password: str | None) -> str:
        """Return the URL that logs in as ``user`` with ``password``."""
        auth = f"{user or ''}:{password}@" if password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.directory / 'cert.pem'}"
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
        if self.tls:
            self._certificate()
            d = self.directory
            args[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(d / "cert.pem"),
                         "--tls-key-file", str(d / "key.pem"), "--tls-ca-cert-file", str(d / "cert.pem"),
                         "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.tls:
            return self._wait_with_cli()
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

    def _certificate(self) -> None:
        if not (self.directory / "cert.pem").exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-keyout", str(self.directory / "key.pem"), "-out", str(self.directory / "cert.pem"),
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                           check=True, capture_output=True)

    def _wait_with_cli(self) -> "RedisServer":
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "PONG" in self.cli("ping"):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on TLS port {self.port}")

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
        if self.tls:
            auth += ["--tls", "--cacert", str(self.directory / "cert.pem")]
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
