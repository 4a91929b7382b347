"""The persistent cache of tuning decisions and saved engines (JIT mode, `AITUNE_JIT_CACHE_DIR`).

When the same script runs again, each module's tuned engine is reused instead of tuned again: engines of AOT
backends are loaded from disk, those of JIT backends (torch.compile) rebuilt with PyTorch's compile caches warm,
and every reused engine is checked against eager on the new process's first samples before it serves a call.

List and clear it from code (`entries()`, `clear()`) or from the shell:

    python -m aitune.torch.cache list [--dir DIR] [--verify]
    python -m aitune.torch.cache clear [--dir DIR]
"""

from __future__ import annotations

import os
from pathlib import Path

from aitune.torch._errors import ConfigError
from aitune.torch.cache._store import CacheEntryInfo, EngineStore


def directory(path: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: `path`, else `AITUNE_JIT_CACHE_DIR` (or `config.cache_dir` set from code)."""
    if path is not None:
        return Path(path).expanduser().absolute()
    from aitune.torch.jit.config import config

    if config.cache_dir is not None:
        return Path(config.cache_dir)
    env = os.environ.get("AITUNE_JIT_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser().absolute()
    raise ConfigError("no cache directory: pass one, or set AITUNE_JIT_CACHE_DIR", field="cache_dir")


def _store_at(path: str | os.PathLike[str] | None) -> EngineStore:
    from aitune.torch.jit.config import config

    return EngineStore(directory(path), int(config.cache_max_bytes))


def entries(path: str | os.PathLike[str] | None = None, *, verify: bool = False) -> list[CacheEntryInfo]:
    """The cached decisions, most recently used first. `verify` also checks every file's sha256."""
    return _store_at(path).entries(verify=verify)


def clear(path: str | os.PathLike[str] | None = None) -> int:
    """Delete every cached decision and engine, and PyTorch's compile caches kept there. Returns how many
    entries were deleted."""
    return _store_at(path).clear()


def evict(path: str | os.PathLike[str] | None = None, max_bytes: int | None = None) -> list[str]:
    """Evict least-recently-used entries until the cache fits `max_bytes` (default: `config.cache_max_bytes`)."""
    store = _store_at(path)
    if max_bytes is not None:
        store.max_bytes = int(max_bytes)
    return store.evict()


__all__ = ["CacheEntryInfo", "clear", "directory", "entries", "evict"]
