"""Opening a cache directory safely, and the per-user key that signs its entries.

The cache is trusted only as far as its directory is (README, "Trust and the cache"):

- The directory must be owned by the user running aitune and not writable by group or others (the rule ssh
  applies to `~/.ssh`); anything else is refused, and the process runs without the cache.
- It is marked: aitune writes `.aitune-cache` (and a standard `CACHEDIR.TAG`) into a directory it creates, or
  into an empty one it is given. A non-empty directory without the marker is refused, so pointing
  `AITUNE_JIT_CACHE_DIR` at a project directory uses (and deletes) nothing in it. A marked directory that holds
  anything at its top level other than aitune's own names is refused too, naming what does not belong.
- Every directory above the cache (and above the secret) must belong to the user or root and be writable by
  nobody else, unless it has the sticky bit (as /tmp has): otherwise whoever may write a parent could swap the
  whole directory between aitune's checks and its reads.
- Every entry is signed with an HMAC-SHA256 under a 32-byte secret kept outside the cache directory (by default
  `~/.config/aitune/cache-secret`, mode 0600, in a directory only the user can write; `AITUNE_JIT_CACHE_SECRET_FILE`
  moves it). An entry planted or edited by anyone without the secret is never loaded.
- Cleaning acts only on names aitune's writer makes, never follows a symbolic link, and removes trees with
  `shutil.rmtree`'s file-descriptor walk, which does not follow links either.

Known limits: the user's own processes are trusted (anything running as the user can read the secret). A cache
directory on a file system that ignores ownership and modes (some network and FAT mounts) passes the ownership
check on whatever those report.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path

from aitune.torch._errors import CacheError

MARKER = ".aitune-cache"
CACHEDIR_TAG = "CACHEDIR.TAG"
LOCK = "lock"
FORMAT = 1
ENTRIES = f"engines-v{FORMAT}"
TMP = "tmp"
#: The only names aitune puts at the top of a cache directory.
TOP_NAMES = frozenset({MARKER, CACHEDIR_TAG, LOCK, ENTRIES, TMP})
#: Names of published entries (the key, a sha256) and of the writer's staging and trash directories.
ENTRY_NAME = re.compile(r"^[0-9a-f]{64}$")
STAGING_NAME = re.compile(r"^[0-9a-f]{32}-(\d+)-[0-9a-f]{8}$")
TRASH_NAME = re.compile(r"^removed-[0-9a-f]{32}-[0-9a-f]{8}$")
SECRET_BYTES = 32
_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
             "# This file is a cache directory tag created by aitune (https://bford.info/cachedir/).\n")


def default_secret_file() -> Path:
    """`$XDG_CONFIG_HOME/aitune/cache-secret`, else `~/.config/aitune/cache-secret` (a relative XDG_CONFIG_HOME is
    ignored, as the XDG specification says: a secret must not land in whatever the working directory is)."""
    base = os.environ.get("XDG_CONFIG_HOME", "").strip()
    home = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return home / "aitune" / "cache-secret"


def expand(path: str | os.PathLike[str], what: str) -> Path:
    """`path` with `~` expanded, absolute; CacheError when `~user` names no user."""
    try:
        return Path(path).expanduser().absolute()
    except RuntimeError as e:  # Path.expanduser: "Could not determine home directory."
        raise CacheError(f"{what} {path}: cannot expand '~' ({e}); give an absolute path", path=Path(path)) from None


def _check_ancestors(real: Path, what: str) -> None:
    """Every directory above `real` must belong to root or the user, and be writable by nobody else unless its
    sticky bit stops others from renaming what is not theirs (as in /tmp): whoever may write a parent could
    otherwise swap `real` for a directory of their own between aitune's checks and its reads."""
    if not hasattr(os, "geteuid"):
        return
    euid = os.geteuid()
    for parent in real.parents:
        try:
            st = os.stat(parent)
        except OSError as e:
            raise CacheError(f"{what} {real}: cannot check {parent} ({e.strerror or e})", path=parent) from None
        if st.st_uid not in (0, euid):
            raise CacheError(f"{what} {real} lies in {parent}, which belongs to {_owner(st)}: they could replace "
                             f"it with one holding code that aitune would load. Use a directory whose every parent "
                             f"belongs to you or to root.", path=parent)
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise CacheError(f"{what} {real} lies in {parent}, which has mode {stat.S_IMODE(st.st_mode):04o}: others "
                             f"can write it, so they could replace {real.name} with one holding their code. Run "
                             f"`chmod go-w {parent}` or choose another directory.", path=parent)


def _user() -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _owner(st: os.stat_result) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(st.st_uid).pw_name} (uid {st.st_uid})"
    except (ImportError, KeyError):
        return f"uid {st.st_uid}"


def _check_private(path: Path, st: os.stat_result, what: str, bits: int, fix: str) -> None:
    """`path` must belong to the user and have none of `bits` set (like ssh's StrictModes)."""
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise CacheError(f"{what} {path} is owned by {_owner(st)}, not by you ({_user()}): someone else could "
                         f"put code there that aitune would load. Use a directory of your own.", path=path)
    if st.st_mode & bits:
        raise CacheError(f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: others can write it, so it could "
                         f"hold code aitune would load. {fix}", path=path)


def open_directory(root: Path, *, create: bool = True) -> Path:
    """Check (and, with `create`, make) a cache directory; returns its resolved path. Raises CacheError."""
    root = expand(root, "cache directory")
    if not os.path.lexists(root):
        if not create:
            raise CacheError(f"{root}: there is no cache directory here", path=root)
        _create(root)
    try:
        real = root.resolve(strict=True)
        st = os.stat(real)
    except OSError as e:
        raise CacheError(f"{root}: cannot use it as the cache directory ({e.strerror or e})", path=root) from None
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"{root} is not a directory; set AITUNE_JIT_CACHE_DIR to a directory path", path=root)
    _check_private(real, st, "cache directory", 0o022, f"Run `chmod go-w {real}` or choose another directory.")
    _check_ancestors(real, "cache directory")
    names = _top_names(real)
    if MARKER not in names:
        if names:
            shown = ", ".join(sorted(names)[:6]) + (", ..." if len(names) > 6 else "")
            raise CacheError(f"{real} is not an aitune cache (it has no {MARKER} marker) and is not empty (it holds "
                             f"{shown}). aitune uses only a new or empty directory as its cache, so that it never "
                             f"deletes files of yours: choose another directory, e.g. ~/.cache/aitune.", path=real)
        if not create:
            raise CacheError(f"{real} is empty: not an aitune cache yet", path=real)
        _write_marker(real)
        names = _top_names(real)
    foreign = sorted(names - TOP_NAMES)
    if foreign:
        raise CacheError(f"{real} holds {', '.join(foreign[:6])}{', ...' if len(foreign) > 6 else ''}, which aitune "
                         f"did not put there; it uses a cache directory only while it holds nothing but its own "
                         f"files ({', '.join(sorted(TOP_NAMES))}). Move those out or choose another directory.",
                         path=real)
    for name in names:
        kind = os.lstat(real / name).st_mode
        expected = stat.S_ISDIR(kind) if name in (ENTRIES, TMP) else stat.S_ISREG(kind)
        if not expected:
            what = "a symbolic link" if stat.S_ISLNK(kind) else "not what aitune made there"
            raise CacheError(f"{real / name} is {what}; aitune follows no links in its cache. Remove it, or choose "
                             f"another directory.", path=real / name)
    _check_marker(real)
    if create and not os.access(real, os.W_OK | os.X_OK):
        raise CacheError(f"{real} is not writable (read-only directory or file system)", path=real)
    return real


def _top_names(real: Path) -> set[str]:
    try:
        return set(os.listdir(real))
    except OSError as e:
        raise CacheError(f"{real}: cannot list it ({e.strerror or e})", path=real) from None


def _create(root: Path) -> None:
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        # Nothing is made below a parent someone else could swap (the same check runs again on the result).
        _check_ancestors(Path(os.path.realpath(root.parent)) / root.name, "cache directory")
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            return  # another process made it first: it is checked like any existing directory
    except OSError as e:
        where = root if e.filename is None else Path(e.filename)
        raise CacheError(f"{root}: cannot create the cache directory ({e.strerror or e}: {where}); set "
                         f"AITUNE_JIT_CACHE_DIR to a directory you can write", path=root) from None


def _write_marker(real: Path) -> None:
    try:
        _write_new(real / MARKER, json.dumps({"aitune_cache": FORMAT, "created": time.time()}) + "\n", 0o600)
        _write_new(real / CACHEDIR_TAG, _TAG_TEXT, 0o644)
    except FileExistsError:
        pass  # another process marked it at the same time
    except OSError as e:
        raise CacheError(f"{real}: cannot mark it as an aitune cache ({e.strerror or e})", path=real) from None


def _check_marker(real: Path) -> None:
    try:
        data = json.loads((real / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CacheError(f"{real / MARKER} is unreadable ({e}); delete the directory to start a new cache",
                         path=real / MARKER) from None
    if not isinstance(data, dict) or data.get("aitune_cache") != FORMAT:
        raise CacheError(f"{real / MARKER} is not an aitune cache marker of format {FORMAT}", path=real / MARKER)


def _write_new(path: Path, text: str, mode: int) -> None:
    """Write a file that must not exist yet (never through a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


# -- the secret -----------------------------------------------------------------------------------------------------

def load_secret(path: Path | None, cache_root: Path, *, create: bool = True) -> bytes:
    """The per-user signing key (created on first use). Raises CacheError when it is unsafe or unusable."""
    path = expand(path, "cache secret") if path is not None else default_secret_file()
    parent = Path(os.path.realpath(path.parent))
    if parent == cache_root or cache_root in parent.parents:
        raise CacheError(f"the cache secret {path} would lie inside the cache directory {cache_root}: whoever can "
                         f"write the cache could then sign entries. Keep it elsewhere (AITUNE_JIT_CACHE_SECRET_FILE, "
                         f"or XDG_CONFIG_HOME).", path=path)
    if create and not os.path.lexists(path):
        _create_secret(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise CacheError(f"the cache secret {path} does not exist", path=path) from None
    except OSError as e:
        reason = "it is a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e))
        raise CacheError(f"cannot read the cache secret {path} ({reason})", path=path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CacheError(f"the cache secret {path} is not a regular file", path=path)
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise CacheError(f"the cache secret {path} is owned by {_owner(st)}, not by you ({_user()}); delete it "
                             f"and aitune makes a new one", path=path)
        if st.st_mode & 0o077:
            raise CacheError(f"the cache secret {path} has mode {stat.S_IMODE(st.st_mode):04o}: others can read "
                             f"it, and with it sign cache entries that aitune would load. Run `chmod 600 {path}`.",
                             path=path)
        key = f.read(4096)
    _check_ancestors(parent / path.name, "the cache secret")
    if len(key) < SECRET_BYTES:
        raise CacheError(f"the cache secret {path} is too short ({len(key)} bytes); delete it and aitune makes a new "
                         f"one (entries signed with the old one are then tuned again)", path=path)
    return key


def _create_secret(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        _write_bytes_new(tmp, secrets.token_bytes(SECRET_BYTES))
        try:
            os.link(tmp, path)  # atomic, and never replaces a secret another process made first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise CacheError(f"cannot create the cache secret {path} ({e.strerror or e}); set "
                         f"AITUNE_JIT_CACHE_SECRET_FILE to a file path you can write", path=path) from None


def _write_bytes_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# -- removing what aitune made -------------------------------------------------------------------------------------

def is_real_dir(path: Path) -> bool:
    """A directory, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_tree(path: Path) -> None:
    """Delete a directory aitune made; a link (or anything not a directory) is left alone."""
    if not is_real_dir(path):
        return
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - platforms without the fd-based walk
        for dirpath, dirnames, _ in os.walk(path):
            if any(os.path.islink(os.path.join(dirpath, d)) for d in dirnames):
                return
    shutil.rmtree(path, ignore_errors=True)
