"""The on-disk store of the persistent cache: one directory per key, signed, published atomically, verified on read.

Layout under the cache directory (opened and checked by `_directory.open_directory`):

    .aitune-cache, CACHEDIR.TAG   the marker aitune writes into a directory it makes (or is given empty)
    lock                          a file lock taken to publish, evict, remove and clear (never while building)
    engines-v1/<key>/             a published entry: entry.json (the decision, settings, file hashes), entry.mac
                                  (its HMAC-SHA256 under the user's secret) and engine/ (the saved engine, if any)
    tmp/<key>-<pid>-<rand>/       an entry being written; renamed into engines-v1/ only when complete

An entry is trusted only if entry.mac is the HMAC of entry.json under this user's secret, entry.json names its
own key and format, every file it lists has the recorded sha256, and the entry holds nothing else (no unlisted
file, no link). An entry that fails the signature (planted, edited, or signed with another secret) is never
loaded; one that is signed but damaged (a partial write, a truncated file) is removed. A process killed while
writing leaves only a tmp/ directory, which nothing reads and which is deleted later. Cleaning touches only names
this writer makes and never follows a link.

Known limits: readers take no lock, so an entry evicted while another process loads it makes that load fail, and
that process tunes again. Files are verified, then loaded: the user's own processes are trusted not to swap them
in between (nobody else can write the directory).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from aitune.torch._errors import CacheError
from aitune.torch._fingerprint import file_sha256
from aitune.torch.cache._directory import (
    ENTRIES,
    ENTRY_NAME,
    FORMAT,
    LOCK,
    STAGING_NAME,
    TMP,
    TRASH_NAME,
    is_real_dir,
    remove_tree,
)

logger = logging.getLogger(__name__)

ENTRY_FILE = "entry.json"
MAC_FILE = "entry.mac"
ENGINE_DIR = "engine"
#: A tmp/ directory whose writer is gone, or older than this, is deleted.
STALE_TMP_SECONDS = 24 * 3600
_MAC_CONTEXT = b"aitune-cache-entry-v1\0"


class CorruptEntry(Exception):
    """An entry that must not be trusted (the message says why)."""


class UnsignedEntry(CorruptEntry):
    """An entry whose signature does not verify under this user's secret: written by someone else."""


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
        return d if self.record.get("artifact") and is_real_dir(d) else None


def sign(secret: bytes, entry_bytes: bytes) -> str:
    return hmac.new(secret, _MAC_CONTEXT + entry_bytes, hashlib.sha256).hexdigest()


class EngineStore:
    """A checked cache directory (see `_directory.open_directory`) and the secret that signs its entries.

    `secret` None: entries can be listed but none verifies, and nothing is published.
    """

    def __init__(self, root: Path, max_bytes: int, secret: bytes | None) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._secret = secret
        #: Set after a write failed (disk full, permissions): the process then runs without the cache.
        self.disabled: str | None = None

    @property
    def entries_dir(self) -> Path:
        return self.root / ENTRIES

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP

    def _lock(self) -> FileLock:
        return FileLock(str(self.root / LOCK))

    # reading

    def lookup(self, key: str) -> Hit | None:
        """The verified entry for `key`, or None (a damaged entry of ours is removed; each problem is logged)."""
        if self.disabled is not None or not ENTRY_NAME.match(key):
            return None
        path = self.entries_dir / key
        if not os.path.lexists(path):
            return None
        try:
            record = self._verified_record(key, path)
        except UnsignedEntry as e:
            logger.warning("aitune cache: not loading %s: %s. It was not written by your aitune (or was edited "
                           "since); it is tuned again and replaced. (For a cache directory copied from another "
                           "machine that you trust: python -m aitune.torch.cache adopt --dir %s)", path, e, self.root)
            return None
        except CorruptEntry as e:
            logger.warning("aitune cache: entry %s is not usable (%s); removing it and tuning again", path, e)
            self._try_remove(key)
            return None
        try:
            os.utime(path)  # last use, for the LRU order
        except OSError:
            pass
        return Hit(key, record, path)

    def _verified_record(self, key: str, path: Path) -> dict[str, Any]:
        if not is_real_dir(path):
            raise UnsignedEntry("it is not a directory (a link?)")
        raw = _read_regular(path / ENTRY_FILE)
        mac = _read_regular(path / MAC_FILE)
        if raw is None:
            raise CorruptEntry(f"{ENTRY_FILE} is missing or not a regular file")
        if self._secret is None:
            raise UnsignedEntry("there is no secret to check its signature with")
        if mac is None or not hmac.compare_digest(mac.strip(), sign(self._secret, raw).encode()):
            raise UnsignedEntry(f"its signature ({MAC_FILE}) does not verify under your cache secret")
        try:
            record = json.loads(raw)
        except ValueError as e:
            raise CorruptEntry(f"{ENTRY_FILE} is unreadable: {e}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("key") != key:
            raise CorruptEntry(f"{ENTRY_FILE} is not a format-{FORMAT} record of this key")
        files = record.get("files")
        if not isinstance(files, dict):
            raise CorruptEntry(f"{ENTRY_FILE} lists no files")
        present = _regular_files(path)
        expected = {ENTRY_FILE, MAC_FILE, *files}
        if present - expected:
            raise CorruptEntry(f"{sorted(present - expected)[0]} is not listed in {ENTRY_FILE}")
        for rel, digest in files.items():
            if rel not in present:
                raise CorruptEntry(f"{rel} is missing")
            if file_sha256(path / rel) != digest:
                raise CorruptEntry(f"{rel} does not match its recorded sha256")
        return record

    # writing

    def publish(self, key: str, record: dict[str, Any], save: Callable[[Path], None] | None = None) -> bool:
        """Write a signed entry for `key` atomically. `save(dir)` writes the engine artifact into `dir`.

        Returns False when another process published the same key first (its entry is kept). Raises what
        `save` raises (nothing is published then), and CacheError when the directory cannot be written (the
        store is then disabled for the process).
        """
        if self.disabled is not None:
            return False
        if self._secret is None or not ENTRY_NAME.match(key):
            raise CacheError(f"aitune cache {self.root}: cannot sign entry {key[:16]}", path=self.root)
        tmp = self.tmp_dir / f"{key[:32]}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            try:
                for d in (self.tmp_dir, self.entries_dir):
                    if not is_real_dir(d):
                        os.mkdir(d, 0o700)
                os.mkdir(tmp, 0o700)
            except OSError as e:
                raise self._disable(e) from None
            if save is not None:
                engine_dir = tmp / ENGINE_DIR
                engine_dir.mkdir()
                try:
                    save(engine_dir)
                except OSError as e:  # the engine's files did not fit (a full disk, a quota): no cache from now on
                    raise self._disable(e) from None
            try:
                return self._seal_and_rename(key, record, tmp, save is not None)
            except OSError as e:
                raise self._disable(e) from None
        finally:
            remove_tree(tmp)

    def _seal_and_rename(self, key: str, record: dict[str, Any], tmp: Path, saved: bool) -> bool:
        assert self._secret is not None
        listed = sorted(_regular_files(tmp))
        files = {rel: file_sha256(tmp / rel) for rel in listed}
        size = sum((tmp / rel).stat().st_size for rel in listed)
        full = {**record, "format": FORMAT, "key": key, "files": files, "size_bytes": size,
                "artifact": saved and bool(files), "created": time.time()}
        raw = json.dumps(full, indent=1, sort_keys=True, default=str).encode()
        _write_synced(tmp / ENTRY_FILE, raw)
        _write_synced(tmp / MAC_FILE, sign(self._secret, raw).encode() + b"\n")
        for rel in listed:
            _fsync(tmp / rel)
        with self._lock():
            dest = self.entries_dir / key
            if os.path.lexists(dest):
                try:
                    self._verified_record(key, dest)
                    return False
                except CorruptEntry:
                    self._remove_locked(key)
            os.rename(tmp, dest)
            _fsync(self.entries_dir)
        try:
            self.evict(protect={key})
        except (OSError, CorruptEntry) as e:  # the entry is published; eviction is tried again on the next one
            logger.debug("aitune cache: evicting after publishing %s failed: %s", key[:16], e)
        return True

    def _disable(self, e: OSError) -> CacheError:
        self.disabled = f"{e.strerror or e}"
        return CacheError(f"aitune cache {self.root}: cannot write it ({e.strerror or e}); running without the cache "
                          f"from now on", path=self.root)

    def remove(self, key: str) -> None:
        with self._lock():
            self._remove_locked(key)

    def _try_remove(self, key: str) -> None:
        try:
            self.remove(key)
        except OSError:
            logger.debug("removing cache entry %s failed", key, exc_info=True)

    def _remove_locked(self, key: str) -> None:
        if not ENTRY_NAME.match(key):
            return
        path = self.entries_dir / key
        if not is_real_dir(path):
            if os.path.islink(path):
                os.unlink(path)  # the link itself, never what it points to
            return
        # Rename first so that no reader sees a half-deleted entry under the key.
        trash = self.tmp_dir / f"removed-{key[:32]}-{secrets.token_hex(4)}"
        try:
            if not is_real_dir(self.tmp_dir):
                os.mkdir(self.tmp_dir, 0o700)
            os.rename(path, trash)
        except OSError:
            trash = path
        remove_tree(trash)

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

    def _clean_tmp(self, *, everything: bool = False) -> None:
        """Delete staging directories of dead or stale writers, and trash (only names this writer makes)."""
        if not is_real_dir(self.tmp_dir):
            return
        now = time.time()
        with os.scandir(self.tmp_dir) as it:
            for d in it:
                staging = STAGING_NAME.match(d.name)
                if not (staging or TRASH_NAME.match(d.name)) or not d.is_dir(follow_symlinks=False):
                    continue
                try:
                    age = now - d.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                dead = staging is not None and not _alive(int(staging.group(1)))
                if everything or staging is None or dead or age > STALE_TMP_SECONDS:
                    remove_tree(Path(d.path))

    # listing

    def _entry_dirs(self) -> list[Path]:
        if not is_real_dir(self.entries_dir):
            return []
        with os.scandir(self.entries_dir) as it:
            return sorted(Path(d.path) for d in it if ENTRY_NAME.match(d.name) and d.is_dir(follow_symlinks=False))

    def _scan(self) -> list[CacheEntryInfo]:
        out = []
        for path in self._entry_dirs():
            key = path.name
            try:
                last_used = path.lstat().st_mtime
                size = sum((path / rel).lstat().st_size for rel in _regular_files(path))
            except OSError:
                continue
            except CorruptEntry as e:  # a link or a device inside: listed as invalid, never read
                out.append(CacheEntryInfo(key=key, path=path, module="?", module_class="?", decision="?",
                                          backend=None, size_bytes=0, created=0.0, last_used=0.0, valid=False,
                                          problem=str(e)))
                continue
            try:
                raw = _read_regular(path / ENTRY_FILE)
                record = json.loads(raw) if raw is not None else None
                if not isinstance(record, dict):
                    raise ValueError(f"{ENTRY_FILE} is missing or not an object")
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
        """Published entries, most recently used first. With `verify`, every signature and file hash is checked."""
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

    def clear(self) -> int:
        """Delete every entry and staging directory (names aitune makes only). Returns the entries deleted."""
        with self._lock():
            paths = self._entry_dirs()
            for path in paths:
                self._remove_locked(path.name)
            self._clean_tmp(everything=True)
        return len(paths)

    def resign(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Sign every entry whose files match its entry.json with this user's secret (`cache adopt`): for a cache
        directory made elsewhere and trusted by the user. Returns (signed keys, [(key, problem)] left as they were).
        """
        if self._secret is None:
            raise CacheError(f"aitune cache {self.root}: no secret to sign with", path=self.root)
        signed: list[str] = []
        skipped: list[tuple[str, str]] = []
        with self._lock():
            for path in self._entry_dirs():
                key = path.name
                mac = path / MAC_FILE
                raw = _read_regular(path / ENTRY_FILE)
                if raw is None:
                    skipped.append((key, f"{ENTRY_FILE} is missing"))
                    continue
                if os.path.lexists(mac) and not stat.S_ISREG(os.lstat(mac).st_mode):
                    skipped.append((key, f"{MAC_FILE} is not a regular file"))
                    continue
                _write_synced(mac, sign(self._secret, raw).encode() + b"\n")
                try:
                    self._verified_record(key, path)
                except CorruptEntry as e:
                    os.unlink(mac)
                    skipped.append((key, str(e)))
                    continue
                signed.append(key)
        return signed, skipped


def _read_regular(path: Path) -> bytes | None:
    """A regular file's bytes, never through a link; None when it is absent or anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


def _regular_files(root: Path) -> set[str]:
    """Relative paths of every file below `root`; CorruptEntry for a link or anything not a plain file."""
    found: set[str] = set()
    for dirpath, dirnames, names in os.walk(root):
        for name in (*dirnames, *names):
            full = Path(dirpath) / name
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                raise CorruptEntry(f"{full.relative_to(root)} is a symbolic link")
            if name in names and not stat.S_ISREG(mode):
                raise CorruptEntry(f"{full.relative_to(root)} is not a regular file")
            if name in names:
                found.add(full.relative_to(root).as_posix())
    return found


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
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
