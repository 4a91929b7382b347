"""Reading zip archives within bounds: checkpoints (`x.ait`) and the zip-format engine files handed to loaders
(AOTInductor `.pt2` packages, `torch.save` files, Torch-TensorRT programs).

Before anything is extracted or handed to a loader, the archive's central directory is checked against the
limits: the number of members, each member's and the total uncompressed size, and the compression ratio of every
member larger than `RATIO_FLOOR_BYTES` and of the whole archive against its size on disk; members whose data
overlap are refused. A zip bomb (a small file that expands to gigabytes, with members of their own or quoting
one shared stream) is refused there, before a byte is inflated. Extraction then streams each member to disk in blocks,
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
from typing import Any

from aitune.torch._errors import ArchiveError
from aitune.torch._units import human_bytes

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
    def of(cls, settings: Any) -> Limits:
        """The limits set in `settings` (the global settings, `aitune.torch.config.config`)."""
        return cls(int(settings.archive_max_members), int(settings.archive_max_member_bytes),
                   int(settings.archive_max_bytes), float(settings.archive_max_ratio))


def check_members(path: Path, infos: list[zipfile.ZipInfo], limits: Limits, archive_bytes: int,
                  directory_offset: int | None = None) -> None:
    """Raise ArchiveError when the archive's declared members exceed `limits`, or overlap (nothing is inflated).

    `archive_bytes` is the archive file's size: the ratio of the whole is taken against it, not against the sum of
    the declared compressed sizes, which overlapping members (one deflate stream quoted by many headers) inflate.
    `directory_offset`: where the central directory starts, which no member's data may reach.
    """
    hint = "raise the limit (AITUNE_ARCHIVE_MAX_*) only for a file you trust"
    _check_no_overlap(path, infos, directory_offset)
    if len(infos) > limits.max_members:
        raise ArchiveError(f"{path}: holds {len(infos)} members, more than archive_max_members="
                           f"{limits.max_members}; refusing to open it ({hint})", path=path)
    total = 0
    for info in infos:
        size = info.file_size
        if size > limits.max_member_bytes:
            raise ArchiveError(f"{path}: member {info.filename} expands to {human_bytes(size)}, more than "
                               f"archive_max_member_bytes={human_bytes(limits.max_member_bytes)}; refusing it ({hint})",
                               path=path)
        if size > RATIO_FLOOR_BYTES and size > limits.max_ratio * max(info.compress_size, 1):
            ratio = size / max(info.compress_size, 1)
            raise ArchiveError(f"{path}: member {info.filename} expands {ratio:.0f}x "
                               f"({human_bytes(info.compress_size)} to {human_bytes(size)}), more than "
                               f"archive_max_ratio={limits.max_ratio:g}; this is how a zip bomb looks, refusing it "
                               f"({hint})", path=path)
        total += size
    if total > limits.max_bytes:
        raise ArchiveError(f"{path}: expands to {human_bytes(total)} in all, more than archive_max_bytes="
                           f"{human_bytes(limits.max_bytes)}; refusing it ({hint})", path=path)
    if total > RATIO_FLOOR_BYTES and total > limits.max_ratio * max(archive_bytes, 1):
        raise ArchiveError(f"{path}: expands {total / max(archive_bytes, 1):.0f}x in all "
                           f"({human_bytes(archive_bytes)} to {human_bytes(total)}), more than "
                           f"archive_max_ratio={limits.max_ratio:g}; this is how a zip bomb looks, refusing it "
                           f"({hint})", path=path)


def _check_no_overlap(path: Path, infos: list[zipfile.ZipInfo], directory_offset: int | None) -> None:
    """Each member's header and data must end before the next member (or the central directory) begins."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    ends = [i.header_offset for i in ordered[1:]] + ([directory_offset] if directory_offset is not None else [None])
    for info, limit in zip(ordered, ends):
        # 30 bytes of local header and the name come before the data (the local extra field may add more).
        data_end = info.header_offset + 30 + len(info.filename.encode()) + info.compress_size
        if limit is not None and data_end > limit:
            raise ArchiveError(f"{path}: member {info.filename} overlaps the next one; a well-formed archive never "
                               f"does (overlapping members are how some zip bombs are built). Refusing it.",
                               path=path)


def check_zip_file(path: Path, limits: Limits) -> None:
    """Check a zip-format file before a loader opens it. A file that is not a zip passes (the loader decides)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            directory_offset = getattr(zf, "start_dir", None)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{path}: not a readable zip archive ({e})", path=path) from None
    check_members(path, infos, limits, path.stat().st_size, directory_offset)


def check_engine_dir(directory: Path, limits: Limits) -> None:
    """Check every zip-format file of an engine directory (as a loader would open it) against `limits`."""
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and not path.is_symlink():
            check_zip_file(path, limits)


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path) -> str:
    """Stream one member to `out` (created; must not exist) and return its hex sha256."""
    h = hashlib.sha256()
    out.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(out, "xb") as dst:
        for block in iter(lambda: src.read(_BLOCK), b""):
            h.update(block)
            dst.write(block)
    return h.hexdigest()
