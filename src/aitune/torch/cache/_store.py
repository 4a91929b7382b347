"""The on-disk store of the persistent cache: one directory per key, published atomically, verified on read.

Layout under the cache directory:

    lock                      a file lock taken to publish, evict, remove and clear (never while building)
    engines-v1/<key>/         a published entry: entry.json (the decision, settings, file hashes) and engine/
    tmp/<key>-<pid>-<rand>/   an entry being written; renamed into engines-v1/ only when complete
    torch/                    PyTorch's own compile caches (TORCHINDUCTOR_CACHE_DIR), when aitune set it

An entry is trusted only if entry.json parses, names its own key and format, and every file it lists has the
recorded sha256. Anything else (a partial write, a truncated file, an edited file) is removed and rebuilt. A
process killed while writing leaves only a tmp/ directory, which nothing reads; it is deleted later.

Known limits: readers take no lock, so an entry evicted while another process loads it makes that load fail,
and that process tunes again. The size budget counts engine entries, not PyTorch's compile caches.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from aitune.torch._fingerprint import file_sha256, files_under

logger = logging.getLogger(__name__)

FORMAT = 1
ENTRIES = f"engines-v{FORMAT}"
ENTRY_FILE = "entry.json"
ENGINE_DIR = "engine"
#: A tmp/ directory whose writer is gone, or older than this, is deleted.
STALE_TMP_SECONDS = 24 * 3600


class CorruptEntry(Exception):
    """An entry that must not be trusted (the message says why)."""


@dataclass(frozen=True)
class CacheEntryInfo:
    """One published entry, as `aitune.torch.cache.entries()` lists it."""

    key: str
    path: Path
    module: str
    module_class: str
    decision: str
    backend: str | None
    size_bytes: int
    created: float
    last_used: float
    valid: bool
    problem: str | None = None


@dataclass
class Hit:
    """A verified entry: its record and the directory holding its engine artifact (if it has one)."""

    key: str
    record: dict[str, Any]
    path: Path

    @property
    def engine_dir(self) -> Path | None:
        d = self.path / ENGINE_DIR
        return d if self.record.get("artifact") and d.is_dir() else None


class EngineStore:
    """The cache directory. Cheap to construct; creates its folders on first write."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)

    @property
    def entries_dir(self) -> Path:
        return self.root / ENTRIES

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def _lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "lock"))

    # reading

    def lookup(self, key: str) -> Hit | None:
        """The verified entry for `key`, or None. A corrupt entry is removed (and logged) and gives None."""
        path = self.entries_dir / key
        if not path.is_dir():
            return None
        try:
            record = self._verified_record(key, path)
        except CorruptEntry as e:
            logger.warning("aitune cache: entry %s is not usable (%s); removing it and tuning again", key[:16], e)
            self.remove(key)
            return None
        try:
            os.utime(path)  # last use, for the LRU order
        except OSError:
            pass
        return Hit(key, record, path)

    def _verified_record(self, key: str, path: Path) -> dict[str, Any]:
        try:
            record = json.loads((path / ENTRY_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CorruptEntry(f"{ENTRY_FILE} is missing") from None
        except (OSError, ValueError) as e:
            raise CorruptEntry(f"{ENTRY_FILE} is unreadable: {e}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("key") != key:
            raise CorruptEntry(f"{ENTRY_FILE} is not a format-{FORMAT} record of this key")
        files = record.get("files")
        if not isinstance(files, dict):
            raise CorruptEntry(f"{ENTRY_FILE} lists no files")
        root = path.resolve()
        for rel, digest in files.items():
            target = (path / rel).resolve()
            if root not in target.parents:
                raise CorruptEntry(f"file {rel!r} lies outside the entry")
            if not target.is_file():
                raise CorruptEntry(f"{rel} is missing")
            if file_sha256(target) != digest:
                raise CorruptEntry(f"{rel} does not match its recorded sha256")
        listed = {(path / rel).resolve() for rel in files}
        for extra in files_under(path / ENGINE_DIR):
            if extra.resolve() not in listed:
                raise CorruptEntry(f"{extra.relative_to(path)} is not listed in {ENTRY_FILE}")
        return record

    # writing

    def publish(self, key: str, record: dict[str, Any], save: Callable[[Path], None] | None = None) -> bool:
        """Write an entry for `key` atomically. `save(dir)` writes the engine artifact into `dir`.

        Returns False when another process published the same key first (its entry is kept). Raises what
        `save` raises; nothing is published then.
        """
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{key[:32]}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            if save is not None:
                engine_dir = tmp / ENGINE_DIR
                engine_dir.mkdir()
                save(engine_dir)
            files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(files_under(tmp))}
            size = sum(p.stat().st_size for p in files_under(tmp))
            full = {**record, "format": FORMAT, "key": key, "files": files, "size_bytes": size,
                    "artifact": save is not None and bool(files), "created": time.time()}
            _write_synced(tmp / ENTRY_FILE, json.dumps(full, indent=1, sort_keys=True, default=str))
            for p in files_under(tmp):
                _fsync(p)
            with self._lock():
                dest = self.entries_dir / key
                self.entries_dir.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    try:
                        self._verified_record(key, dest)
                        return False
                    except CorruptEntry:
                        self._remove_locked(key)
                os.rename(tmp, dest)
                _fsync(self.entries_dir)
            self.evict(protect={key})
            return True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, key: str) -> None:
        with self._lock():
            self._remove_locked(key)

    def _remove_locked(self, key: str) -> None:
        path = self.entries_dir / key
        if not path.exists():
            return
        # Rename first so that no reader sees a half-deleted entry under the key.
        trash = self.tmp_dir / f"removed-{key[:32]}-{secrets.token_hex(4)}"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, trash)
        except OSError:
            trash = path
        shutil.rmtree(trash, ignore_errors=True)

    def evict(self, protect: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Delete least-recently-used entries until the store fits its budget, and dead writers' tmp dirs."""
        removed: list[str] = []
        with self._lock():
            self._clean_tmp()
            infos = sorted((i for i in self._scan() if i.valid), key=lambda i: i.last_used)
            total = sum(i.size_bytes for i in infos)
            for info in infos:
                if total <= self.max_bytes:
                    break
                if info.key in protect:
                    continue
                self._remove_locked(info.key)
                total -= info.size_bytes
                removed.append(info.key)
                logger.info("aitune cache: evicted %s (%s, %s) to stay under %d bytes", info.key[:16],
                            info.module, info.backend or info.decision, self.max_bytes)
        return removed

    def _clean_tmp(self) -> None:
        if not self.tmp_dir.is_dir():
            return
        now = time.time()
        for d in self.tmp_dir.iterdir():
            parts = d.name.rsplit("-", 2)
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            try:
                age = now - d.stat().st_mtime
            except OSError:
                continue
            if d.name.startswith("removed-") or age > STALE_TMP_SECONDS or (pid is not None and not _alive(pid)):
                shutil.rmtree(d, ignore_errors=True)

    # listing

    def _scan(self) -> list[CacheEntryInfo]:
        if not self.entries_dir.is_dir():
            return []
        out = []
        for path in sorted(self.entries_dir.iterdir()):
            if not path.is_dir():
                continue
            key = path.name
            try:
                last_used = path.stat().st_mtime
            except OSError:
                continue
            size = sum(p.stat().st_size for p in files_under(path))
            try:
                record = json.loads((path / ENTRY_FILE).read_text(encoding="utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                out.append(CacheEntryInfo(
                    key=key, path=path, module=str(record.get("module", "?")),
                    module_class=str(record.get("module_class", "?")), decision=str(record.get("decision", "?")),
                    backend=record.get("backend"), size_bytes=size, created=float(record.get("created", 0.0)),
                    last_used=last_used, valid=True))
            except (OSError, ValueError) as e:
                out.append(CacheEntryInfo(key=key, path=path, module="?", module_class="?", decision="?",
                                          backend=None, size_bytes=size, created=0.0, last_used=last_used,
                                          valid=False, problem=str(e)))
        return out

    def entries(self, *, verify: bool = False) -> list[CacheEntryInfo]:
        """Published entries, most recently used first. With `verify`, every file hash is checked too."""
        infos = self._scan()
        if verify:
            checked = []
            for info in infos:
                try:
                    self._verified_record(info.key, info.path)
                    checked.append(info)
                except CorruptEntry as e:
                    checked.append(CacheEntryInfo(**{**info.__dict__, "valid": False, "problem": str(e)}))
            infos = checked
        return sorted(infos, key=lambda i: i.last_used, reverse=True)

    def clear(self, *, include_torch: bool = True) -> int:
        """Delete every entry (and PyTorch's compile caches kept here). Returns the number of entries deleted."""
        with self._lock():
            n = len(self._scan())
            for d in (self.entries_dir, self.tmp_dir, *( [self.root / "torch"] if include_torch else [])):
                if d.exists():
                    shutil.rmtree(d, ignore_errors=True)
        return n


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's) data to disk; best effort where the platform refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
