"""The checkpoint file format: the manifest's schema, the sums file, and reading an archive safely.

`x.ait` is a zip of plain data whose `manifest.json` lists the sha256 of every other member; `x_sha256_sums.txt`
beside it holds the archive's own sha256 in `sha256sum` format. Reading checks the outer hash, the manifest's
schema (pydantic, unknown fields refused), that the archive holds exactly the listed members under safe relative
paths, and every member's hash, before anything is unpacked for use.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

import aitune
from aitune.torch._archive import Limits, check_members, extract_member
from aitune.torch._errors import ArchiveError, CheckpointError
from aitune.torch._fingerprint import file_sha256
from aitune.torch.config import config as global_config

FORMAT: Literal["aitune-checkpoint"] = "aitune-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignatureEntry(_Strict):
    grad_enabled: bool
    inference_mode: bool
    #: (device type, dtype) for each device type with autocast on when the calls were made; and whether
    #: deterministic algorithms were on. Absent in files of earlier versions (neither).
    autocast: list[tuple[str, str]] = []
    deterministic: bool = False
    inputs_file: str
    inputs: list[dict[str, str]]
    min_shapes: list[list[int]]
    max_shapes: list[list[int]]
    engine_min_shapes: list[list[int]]
    engine_max_shapes: list[list[int]]
    backend_name: str
    backend: str
    kind: Literal["jit", "aot"]
    settings: dict[str, Any]
    artifact_dir: str | None
    #: Informational only: whether the artifact runs code is decided by the registered backend class, never by
    #: what a file says about itself.
    artifact_runs_code: bool
    eager_latency_ms: float | None
    tuned_latency_ms: float | None


class ModuleEntry(_Strict):
    name: str
    module_class: str
    structure: str
    weights: str
    device: str
    signatures: list[SignatureEntry]


class Manifest(_Strict):
    format: Literal["aitune-checkpoint"]
    version: int
    created: float
    libraries: dict[str, str]
    device_model: str
    modules: list[ModuleEntry]
    files: dict[str, str]


def sums_path(path: Path) -> Path:
    """`x.ait` -> `x_sha256_sums.txt` beside it."""
    return path.with_name(f"{path.stem}_sha256_sums.txt")


def verify_outer_hash(source: Path) -> None:
    if not source.is_file():
        raise CheckpointError(f"{source}: no such checkpoint file", path=source)
    sums = sums_path(source)
    if not sums.is_file():
        raise CheckpointError(f"{sums}: missing; it holds the sha256 of {source.name} and is written beside it by "
                              "ait.save. Copy it along with the checkpoint.", path=sums)
    expected = None
    for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _SUMS_LINE.match(line.strip())
        if m and m.group(2).strip() == source.name:
            expected = m.group(1)
    if expected is None:
        raise CheckpointError(f"{sums}: has no sha256 line for {source.name}", path=sums)
    actual = file_sha256(source)
    if actual != expected:
        raise CheckpointError(f"{source}: sha256 {actual[:16]}... does not match {expected[:16]}... recorded in "
                              f"{sums.name}; the file was modified, truncated or replaced. Refusing to load it.",
                              path=source)


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and ":" not in name


#: The manifest is read into memory; it is JSON of a few kilobytes per module.
_MAX_MANIFEST_BYTES = 64 << 20


def read_archive(source: Path, unpacked: Path) -> Manifest:
    """Check the archive's members against the size limits, then its manifest, then extract every member into
    `unpacked` (streamed, hashed on the way) and check it against the manifest."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{source}: not a readable checkpoint archive ({e})", path=source) from None
    with zf:
        infos = zf.infolist()
        try:
            check_members(source, infos, Limits.of(global_config), source.stat().st_size,
                          getattr(zf, "start_dir", None))
        except ArchiveError as e:
            raise CheckpointError(str(e), path=source) from None
        by_name = {i.filename: i for i in infos}
        if len(by_name) != len(infos):
            raise CheckpointError(f"{source}: holds two members of the same name", path=source)
        info = by_name.get(MANIFEST)
        if info is None:
            raise CheckpointError(f"{source}: no {MANIFEST} inside; not an aitune checkpoint", path=source)
        if info.file_size > _MAX_MANIFEST_BYTES:
            raise CheckpointError(f"{source}: its {MANIFEST} is {info.file_size} bytes; refusing it", path=source)
        try:
            raw = zf.read(info)
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{source}: {MANIFEST} is unreadable ({e})", path=source) from None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise CheckpointError(f"{source}: {MANIFEST} is not valid JSON ({e})", path=source) from None
        if isinstance(data, dict) and isinstance(data.get("version"), int) and data["version"] > VERSION:
            raise CheckpointError(f"{source}: checkpoint format version {data['version']} is newer than this "
                                  f"aitune ({aitune.__version__}) reads ({VERSION}); upgrade aitune", path=source)
        try:
            manifest = Manifest.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise CheckpointError(f"{source}: {MANIFEST} is malformed at {where or 'top level'}: {first.get('msg')}",
                                  path=source) from None
        members = set(by_name) - {MANIFEST}
        listed = set(manifest.files)
        if members - listed:
            raise CheckpointError(f"{source}: holds files its manifest does not list: "
                                  f"{', '.join(sorted(members - listed)[:5])}", path=source)
        for rel, digest in manifest.files.items():
            if not _safe_member(rel):
                raise CheckpointError(f"{source}: refusing member path {rel!r}", path=source)
            if rel not in by_name:
                raise CheckpointError(f"{source}: {rel} is listed but missing", path=source)
            try:
                actual = extract_member(zf, by_name[rel], unpacked / rel)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise CheckpointError(f"{source}: {rel} is unreadable ({e})", path=source) from None
            if actual != digest:
                raise CheckpointError(f"{source}: {rel} does not match its sha256 in {MANIFEST}", path=source)
    for entry in manifest.modules:
        for sig in entry.signatures:
            for path in (sig.inputs_file, sig.artifact_dir):
                if path is not None and not _safe_member(path):
                    raise CheckpointError(f"{source}: refusing path {path!r}", path=source)
    return manifest
