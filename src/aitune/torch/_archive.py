"""Reading zip archives within bounds: checkpoints (`x.ait`) and the zip-format engine files handed to loaders
(AOTInductor `.pt2` packages, `torch.save` files, Torch-TensorRT programs).

Before anything is extracted or handed to a loader, the archive's central directory is checked against the
limits: the number of members, each member's and the total uncompressed size, and the compression ratio of every
member larger than `RATIO_FLOOR_BYTES` and of the whole archive. A zip bomb (a small file that expands to
gigabytes) is refused there, before a byte is inflated. Extraction then streams each member to disk in blocks,
hashing as it goes, and never holds a whole member in memory; `zipfile` stops inflating a member at the size its
header declares, so a header that lies about its size cannot expand past the checked limit.

The limits are global settings (`archive_max_members`, `archive_max_member_bytes`, `archive_max_bytes`,
`archive_max_ratio`; env `AITUNE_ARCHIVE_*`).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aitune.torch._errors import ArchiveError

#: Members smaller than this are not held to the ratio limit (small JSON files compress well legitimately).
RATIO_FLOOR_BYTES = 1 << 20
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_member_bytes: int
    max_bytes: int
    max_ratio: float

    @classmethod
    def from_config(cls) -> Limits:
        from aitune.torch.config import config

        return cls(int(config.archive_max_members), int(config.archive_max_member_bytes),
                   int(config.archive_max_bytes), float(config.archive_max_ratio))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_members(path: Path, infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    """Raise ArchiveError when the archive's declared members exceed `limits` (nothing is read)."""
    hint = "raise the limit (AITUNE_ARCHIVE_MAX_*) only for a file you trust"
    if len(infos) > limits.max_members:
        raise ArchiveError(f"{path}: holds {len(infos)} members, more than archive_max_members="
                           f"{limits.max_members}; refusing to open it ({hint})", path=path)
    total = compressed = 0
    for info in infos:
        size = info.file_size
        if size > limits.max_member_bytes:
            raise ArchiveError(f"{path}: member {info.filename} expands to {_size(size)}, more than "
                               f"archive_max_member_bytes={_size(limits.max_member_bytes)}; refusing it ({hint})",
                               path=path)
        if size > RATIO_FLOOR_BYTES and size > limits.max_ratio * max(info.compress_size, 1):
            ratio = size / max(info.compress_size, 1)
            raise ArchiveError(f"{path}: member {info.filename} expands {ratio:.0f}x ({_size(info.compress_size)} "
                               f"to {_size(size)}), more than archive_max_ratio={limits.max_ratio:g}; this is how a "
                               f"zip bomb looks, refusing it ({hint})", path=path)
        total += size
        compressed += info.compress_size
    if total > limits.max_bytes:
        raise ArchiveError(f"{path}: expands to {_size(total)} in all, more than archive_max_bytes="
                           f"{_size(limits.max_bytes)}; refusing it ({hint})", path=path)
    if total > RATIO_FLOOR_BYTES and total > limits.max_ratio * max(compressed, 1):
        raise ArchiveError(f"{path}: expands {total / max(compressed, 1):.0f}x in all, more than "
                           f"archive_max_ratio={limits.max_ratio:g}; refusing it ({hint})", path=path)


def check_zip_file(path: Path, limits: Limits | None = None) -> None:
    """Check a zip-format file before a loader opens it. A file that is not a zip passes (the loader decides)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{path}: not a readable zip archive ({e})", path=path) from None
    check_members(path, infos, limits or Limits.from_config())


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path) -> str:
    """Stream one member to `out` (created; must not exist) and return its hex sha256."""
    h = hashlib.sha256()
    out.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(out, "xb") as dst:
        for block in iter(lambda: src.read(_BLOCK), b""):
            h.update(block)
            dst.write(block)
    return h.hexdigest()
