"""A cache of compiled WebAssembly modules, so that a second start does not recompile.

Compiling the reference module takes milliseconds and a 200 MB one seconds; ``Module.deserialize``
of the serialized machine code takes microseconds. Deserializing is also running native code that
wasmtime does not re-check, so this cache only ever deserializes files this machine wrote:

- a file is named by the sha256 of (wasm bytes digest, wasmtime version, machine, engine config),
  so a changed module, wasmtime or config never hits a stale entry;
- each file is ``MAGIC + HMAC-SHA256(key, serialized) + serialized``, where ``key`` is a random
  secret created once in the cache directory (mode 0600). A file copied from elsewhere, edited or
  truncated fails the HMAC and is recompiled, never deserialized;
- files are written atomically (`afcore.fsutil`: temporary file in the same directory, fsync, rename,
  fsync of the directory), and temporaries a killed writer left are removed when a cache is opened;
- nothing from a bundle is ever deserialized: bundles carry wasm bytes, which are compiled.

A cache that cannot be read or written (read-only home, full disk) only costs a recompilation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from afcore import fsutil

from ._errormap import call_or_none, map_wasm_compile_errors
from .sandbox import engine_fingerprint, shared_engine

__all__ = ["CacheStats", "ModuleCache", "default_cache_dir"]

#: first bytes of every cache file (format version of the file layout)
MAGIC = b"AFMODC1\n"
#: name of the per-directory secret that authenticates cache files
KEY_NAME = "cache.key"
#: temporaries older than this (seconds) were left by a killed writer; younger ones may belong to
#: another process writing now (the directory is shared), so they are left alone
STALE_TEMPORARY_SECONDS = 3600
_DIGEST_SIZE = 32


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/af/modules``, or ``~/.cache/af/modules`` when it is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "af" / "modules"


@dataclass
class CacheStats:
    """Counters of one `ModuleCache`: tests and `af run --verbose` read them.

    Attributes:
        hits: modules deserialized from a verified cache file.
        compiles: modules compiled from wasm bytes.
        rejected: cache files refused (bad HMAC, truncated, not deserializable).
        write_errors: cache files that could not be written.
    """

    hits: int = 0
    compiles: int = 0
    rejected: int = 0
    write_errors: int = 0


class ModuleCache:
    """Compiled-module cache in one directory.

    Args:
        directory: where files go; `default_cache_dir` when None. Created (mode 0700) on first write.
    """

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.stats = CacheStats()
        self._key: bytes | None = None
        fsutil.clean_stale_temporaries(self.directory, older_than=STALE_TEMPORARY_SECONDS)

    def path_for(self, wasm: bytes) -> Path:
        """Return the cache file that would hold the compiled form of ``wasm``."""
        key = hashlib.sha256()
        key.update(hashlib.sha256(wasm).digest())
        key.update(engine_fingerprint().encode())
        return self.directory / f"{key.hexdigest()}.cwasm"

    def load(self, wasm: bytes, *, member: str = "model.wasm") -> wasmtime.Module:
        """Return the compiled module for ``wasm``, from the cache when a verified file exists.

        Args:
            wasm: the module's bytes (from a bundle).
            member: the member name, for error messages.

        Returns:
            A `wasmtime.Module` of the shared engine.

        Raises:
            BundleError: AF5045 when the bytes are not a valid module.
        """
        path = self.path_for(wasm)
        module = self._read(path)
        if module is not None:
            self.stats.hits += 1
            return module
        with map_wasm_compile_errors(member):
            module = wasmtime.Module(shared_engine(), wasm)
        self.stats.compiles += 1
        self._write(path, module)
        return module

    def _read(self, path: Path) -> wasmtime.Module | None:
        try:
            blob = path.read_bytes()
            key = self._secret(create=False)
        except OSError:
            return None
        if key is None:
            return None
        head, tag, body = blob[: len(MAGIC)], blob[len(MAGIC) : len(MAGIC) + _DIGEST_SIZE], blob[len(MAGIC) + _DIGEST_SIZE :]
        expected = hmac.new(key, body, hashlib.sha256).digest()
        if head != MAGIC or not hmac.compare_digest(tag, expected):
            self.stats.rejected += 1
            return None
        # Only reached with bytes whose HMAC proves this machine's cache wrote them; None when
        # another wasmtime build with the same version string wrote them.
        module = call_or_none(wasmtime.Module.deserialize, shared_engine(), body)
        if module is None:
            self.stats.rejected += 1
        return module

    def _write(self, path: Path, module: wasmtime.Module) -> None:
        serialized = call_or_none(module.serialize)
        try:
            if serialized is None:
                raise OSError("wasmtime cannot serialize the module")
            key = self._secret(create=True)
            body = bytes(serialized)
            _write_atomic(path, MAGIC + hmac.new(key, body, hashlib.sha256).digest() + body)
        except OSError:
            self.stats.write_errors += 1

    def _secret(self, *, create: bool) -> bytes | None:
        if self._key is not None:
            return self._key
        path = self.directory / KEY_NAME
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            if not create:
                return None
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_atomic(path, secrets.token_bytes(_DIGEST_SIZE), exclusive=True)
            key = path.read_bytes()  # another process may have won the race: use its key
        if len(key) != _DIGEST_SIZE:
            raise OSError(f"cache key {path} is malformed")
        self._key = key
        return key


def _write_atomic(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` (mode 0600) with `afcore.fsutil.write_file_atomic`.

    With ``exclusive``, an existing ``path`` is kept (another process won the race).
    """
    fsutil.write_file_atomic(path, data, mode=0o600, exclusive=exclusive)
