"""The persistent cache of tuning decisions and saved engines (`AITUNE_JIT_CACHE_DIR`).

When the same script runs again, each module's tuned engine is reused instead of tuned again: engines of AOT
backends are loaded from disk, those of JIT backends (torch.compile) rebuilt, and every reused engine is checked
against eager on the new process's first samples, then confirmed on its first live calls, before it serves one.

The cache is trusted only as far as its directory is: it must be the user's own (not writable by others),
marked as an aitune cache, and every entry is signed with a per-user secret kept outside it (see
`aitune.torch.cache._directory` and the README's "Trust and the cache"). A directory that fails those checks is
refused with one warning, and the script runs without the cache.

List, clear and adopt it from code (`entries()`, `clear()`, `adopt()`) or from the shell:

    python -m aitune.torch.cache list [--dir DIR] [--verify]
    python -m aitune.torch.cache clear [--dir DIR]
    python -m aitune.torch.cache adopt [--dir DIR]     # trust a cache directory made on another machine
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from aitune.torch._errors import CacheError, ConfigError
from aitune.torch.cache._directory import expand, load_secret, open_directory
from aitune.torch.cache._store import CacheEntryInfo, EngineStore

logger = logging.getLogger(__name__)


def _configured() -> Any:
    """The JIT settings (where `cache_dir` lives), found through the settings registry: a lower floor than the
    fronts, the cache does not import them."""
    from aitune.torch._settings._model import SCOPES
    from aitune.torch._settings._sources import ensure_settings_loaded

    ensure_settings_loaded()
    scope = SCOPES.named("config")
    if scope is None:
        raise ConfigError("the JIT settings are not loaded; pass a cache directory", field="cache_dir")
    return scope.model


def directory(path: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: `path`, else the configured `cache_dir` (`AITUNE_JIT_CACHE_DIR`)."""
    if path is not None:
        return expand(path, "cache directory")
    configured = getattr(_configured(), "cache_dir", None)
    if configured is None:
        raise ConfigError("no cache directory: pass one, or set AITUNE_JIT_CACHE_DIR", field="cache_dir")
    return Path(configured)


def open_store(path: str | os.PathLike[str] | None = None, *, create: bool = False, need_secret: bool = False,
               settings: Any = None) -> EngineStore:
    """The store in `path` (default: the configured directory), checked as the module docstring says.

    `create`: make (and mark) the directory when it is missing or empty. `need_secret`: fail when the signing
    secret cannot be read (else entries can be listed and removed, but none verifies). `settings`: an object with
    `cache_max_bytes` and `cache_secret_file` (default: the JIT settings). Raises CacheError.
    """
    settings = settings if settings is not None else _configured()
    root = open_directory(directory(path), create=create)
    secret_file = getattr(settings, "cache_secret_file", None)
    try:
        secret: bytes | None = load_secret(Path(secret_file) if secret_file is not None else None, root,
                                           create=create or need_secret)
    except CacheError:
        if need_secret:
            raise
        secret = None
    return EngineStore(root, int(getattr(settings, "cache_max_bytes", 10 << 30)), secret)


class _Opened:
    """The configured store of this process, opened once per setting; a refusal is warned about once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[tuple[Path, int, Path | None], EngineStore | None] = {}

    def get(self, settings: Any) -> EngineStore | None:
        root = getattr(settings, "cache_dir", None)
        if root is None:
            return None
        secret_file = getattr(settings, "cache_secret_file", None)
        key = (Path(root), int(settings.cache_max_bytes), secret_file)
        with self._lock:
            if key in self._stores:
                store = self._stores[key]
                return store if store is None or store.disabled is None else None
            try:
                store = open_store(root, create=True, need_secret=True, settings=settings)
            except CacheError as e:
                logger.warning("not using the cache: %s. The script runs without the cache.", str(e).rstrip("."))
                store = None
            self._stores[key] = store
            return store

    def reset(self) -> None:
        with self._lock:
            self._stores.clear()


_OPENED = _Opened()


def configured_store(settings: Any) -> EngineStore | None:
    """The store of `settings.cache_dir` (made and marked if missing), or None when the cache is off or the
    directory cannot be used (logged once). `settings` is the JIT settings object (`cache_dir`,
    `cache_max_bytes`, `cache_secret_file`)."""
    return _OPENED.get(settings)


def reset() -> None:
    """Forget the stores opened by this process (for tests)."""
    _OPENED.reset()


def entries(path: str | os.PathLike[str] | None = None, *, verify: bool = False) -> list[CacheEntryInfo]:
    """The cached decisions, most recently used first. `verify` also checks every signature and file hash."""
    return open_store(path).entries(verify=verify)


def clear(path: str | os.PathLike[str] | None = None) -> int:
    """Delete every cached decision and engine (only what aitune wrote). Returns how many entries were deleted."""
    return open_store(path).clear()


def evict(path: str | os.PathLike[str] | None = None, max_bytes: int | None = None) -> list[str]:
    """Evict least-recently-used entries until the cache fits `max_bytes` (default: `config.cache_max_bytes`)."""
    store = open_store(path)
    if max_bytes is not None:
        store.max_bytes = int(max_bytes)
    return store.evict()


def adopt(path: str | os.PathLike[str] | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Sign every intact entry of a cache directory made elsewhere (another machine or user) with your secret, so
    that this user's runs load it. Only for a directory whose origin you trust: its engines run as native code.
    Returns (signed keys, [(key, why it was left unsigned)])."""
    return open_store(path, need_secret=True, create=False).resign()


__all__ = ["CacheEntryInfo", "adopt", "clear", "configured_store", "directory", "entries", "evict", "open_store",
           "reset"]
