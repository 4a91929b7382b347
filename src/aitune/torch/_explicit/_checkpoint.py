"""`ait.save` / `ait.load`: a tuned model's engines in one file, `x.ait`, with `x_sha256_sums.txt` beside it.

`x.ait` is a zip archive of plain data:

    manifest.json                 format, versions, and per wrapped module: its structure and weight digests and,
                                  per tuned input signature, the backend (registered name + settings), shape
                                  ranges, latencies and the sha256 of every other member
    modules/<i>/<j>/inputs.pt     the inputs of one recorded call (tensors and plain containers only)
    modules/<i>/<j>/engine/...    the saved engine of an AOT backend (ONNX file, TensorRT plan, AOTInductor package)

`x_sha256_sums.txt` holds the sha256 of `x.ait` in `sha256sum` format, so `sha256sum -c x_sha256_sums.txt`
works too. `load` checks it, the archive's sizes against the configured bounds (`_archive`), then every member
against the manifest, and refuses a tampered, truncated, oversized or mismatched checkpoint with a
CheckpointError naming the file. Nothing in the file is executed: the manifest is JSON validated field by field,
backends are looked up by registered name only, inputs are read with `torch.load(weights_only=True)`, and
engines whose loading would run code (AOTInductor's compiled library, Torch-TensorRT's pickled program; the
registered backend class says so, never the file) are rebuilt from the recorded inputs unless
`trust_native_code=True`. Backend settings holding free-form options (Inductor config options,
execution-provider options) can name a compiler or a library to run: they are refused unless
`trust_native_code=True`. Loading is all or nothing: every module is checked and every engine loaded before any
is installed.

Every engine, loaded or rebuilt, is checked against the model's own eager outputs on the recorded inputs, and,
since those inputs came with the file, serves on probation until it has also matched eager on the first live
calls (`_confirm`). Engines of JIT backends (torch.compile) are always rebuilt.

Known limits: inputs that hold objects other than tensors, numbers, strings and plain containers cannot be
stored safely, so such signatures are left out of the checkpoint (with a warning). A rebuilt AOT engine covers
the recorded call's shapes only; other shapes run eagerly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
import weakref
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from aitune.torch import _fingerprint, _tree
from aitune.torch._archive import Limits, check_engine_dir, check_zip_file
from aitune.torch._checking import same_values
from aitune.torch._errors import ArchiveError, CheckpointError, UnknownBackendError
from aitune.torch._explicit._checkpoint_format import (
    FORMAT,
    MANIFEST,
    VERSION,
    Manifest,
    ModuleEntry,
    SignatureEntry,
    read_archive,
    sums_path,
    verify_outer_hash,
)
from aitune.torch._explicit._module import Module, find_wrappers, runtime_of
from aitune.torch._explicit._runtime import ModuleRuntime
from aitune.torch._samples import (
    AUTOCAST_DEVICE_TYPES,
    Sample,
    SignatureRecord,
    first_device,
    modes_of,
    recorded_modes,
    signature_key,
)
from aitune.torch._settings._sources import ensure_settings_loaded
from aitune.torch._signature._confirm import on_probation
from aitune.torch._signature._decide import make_job, purity, recorded_inference_mode
from aitune.torch._signature._quiet import libraries_quiet
from aitune.torch._signature._rng import rng_kept
from aitune.torch._signature._route import OwnWork, drop_engine
from aitune.torch.backend import create_backend
from aitune.torch.config import config as global_config
from aitune.torch.tune_strategy import check

logger = logging.getLogger(__name__)

def _wrappers(obj: Any) -> list[tuple[str, Any]]:
    """(name, runtime) of every ait.Module reachable from a model or pipeline, in a stable order."""
    return [(rt.name, rt) for rt in find_wrappers(obj)]


# saving

def save(model_or_pipeline: Any, path: str | os.PathLike[str]) -> Path:
    """Write the tuned engines of every `ait.Module` in `model_or_pipeline` to `path` (conventionally `x.ait`)
    and their hash to `x_sha256_sums.txt`. Both are replaced atomically. Returns the checkpoint's path."""
    target = Path(path).expanduser().absolute()
    wrappers = _wrappers(model_or_pipeline)
    if not wrappers:
        raise CheckpointError(f"{target}: nothing to save: no ait.Module in {type(model_or_pipeline).__name__} "
                              "(wrap modules with ait.Module or ait.wrap, then ait.tune)", path=target)
    names = [n for n, _ in wrappers]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{target}: two wrapped modules share a name ({', '.join(sorted(names))}); give "
                              "each ait.Module a distinct name", path=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aitune-save-") as staging_dir:
        staging = Path(staging_dir)
        modules = [_stage_module(i, name, rt, staging) for i, (name, rt) in enumerate(wrappers)]
        if not any(m.signatures for m in modules):
            raise CheckpointError(f"{target}: nothing to save: {', '.join(names)} has no tuned signature; run "
                                  "ait.tune first", path=target)
        files = {str(p.relative_to(staging).as_posix()): _fingerprint.file_sha256(p)
                 for p in sorted(_fingerprint.files_under(staging))}
        device = next((s.inputs[0]["device"] for m in modules for s in m.signatures if s.inputs), "cpu")
        manifest = Manifest(format=FORMAT, version=VERSION, created=time.time(),
                             libraries=_fingerprint.library_versions(),
                             device_model=_fingerprint.device_model(torch.device(device)), modules=modules,
                             files=files)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr(MANIFEST, manifest.model_dump_json(indent=1))
                for rel in files:
                    zf.write(staging / rel, rel)
            digest = _fingerprint.file_sha256(tmp)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
    sums = sums_path(target)
    sums_tmp = sums.with_name(f".{sums.name}.{os.getpid()}.tmp")
    sums_tmp.write_text(f"{digest}  {target.name}\n", encoding="utf-8")
    os.replace(sums_tmp, sums)
    n_sigs = sum(len(m.signatures) for m in modules)
    logger.info("saved %d module(s), %d tuned signature(s) to %s (%s)", len(modules), n_sigs, target, sums.name)
    return target


def _stage_module(i: int, name: str, rt: ModuleRuntime, staging: Path) -> ModuleEntry:
    module = rt.module
    entries = []
    for j, sig in enumerate(rt.signatures.values()):
        if sig.status != "tuned" or sig.engine is None or sig.backend_obj is None:
            continue
        if sig.reference is None:
            logger.warning("%s: signature %d has no recorded inputs to store; it is not saved", name, j)
            continue
        folder = staging / "modules" / str(i) / str(j)
        folder.mkdir(parents=True)
        inputs_file = folder / "inputs.pt"
        if not _storable(sig.reference):
            logger.warning("%s: signature %d is not saved: its inputs hold objects other than tensors, numbers, "
                           "strings and plain containers, which cannot be stored without pickle", name, j)
            continue
        torch.save({"args": list(sig.reference.args), "kwargs": dict(sig.reference.kwargs)}, inputs_file)
        backend = sig.backend_obj
        artifact_dir = None
        if backend.kind == "aot":
            engine_dir = folder / "engine"
            engine_dir.mkdir()
            try:
                sig.engine.save(engine_dir)
                artifact_dir = str(engine_dir.relative_to(staging).as_posix())
            except NotImplementedError:
                logger.info("%s: the %s engine has no artifact; it will be rebuilt at load", name, backend.name)
        lo, hi = sig.engine_range if sig.engine_range is not None else (sig.min_shapes, sig.max_shapes)
        entries.append(SignatureEntry(
            grad_enabled=bool(sig.key[0]), inference_mode=bool(sig.key[1]),
            autocast=list(modes_of(sig.key)[0]), deterministic=modes_of(sig.key)[1],
            inputs_file=str(inputs_file.relative_to(staging).as_posix()), inputs=sig.description,
            min_shapes=sig.min_shapes, max_shapes=sig.max_shapes, engine_min_shapes=lo, engine_max_shapes=hi,
            backend_name=backend.name, backend=backend.describe(), kind=backend.kind,
            settings=backend.engine_settings(), artifact_dir=artifact_dir,
            artifact_runs_code=bool(backend.artifact_runs_code and artifact_dir is not None),
            eager_latency_ms=sig.eager_latency_ms, tuned_latency_ms=sig.tuned_latency_ms))
    cls = type(module)
    return ModuleEntry(name=name, module_class=f"{cls.__module__}.{cls.__qualname__}",
                        structure=_fingerprint.structure_digest(module), weights=_fingerprint.weights_digest(module),
                        device=str(_module_device(module)), signatures=entries)


def _storable(sample: Sample) -> bool:
    ok = (torch.Tensor, bool, int, float, str, type(None))

    def walk(obj: Any) -> bool:
        if isinstance(obj, ok):
            return True
        if type(obj) in (list, tuple):
            return all(walk(v) for v in obj)
        if type(obj) is dict:
            return all(isinstance(k, str) and walk(v) for k, v in obj.items())
        return False

    return walk(list(sample.args)) and walk(dict(sample.kwargs))


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


# loading

def load(model_or_pipeline: Any, path: str | os.PathLike[str], *, trust_native_code: bool = False) -> Any:
    """Load the engines saved by `save` into the `ait.Module` wrappers of `model_or_pipeline` (same names, same
    structure and weights), check each against the model's eager outputs, and return `model_or_pipeline`.

    A bare nn.Module (no wrapper inside) and a checkpoint of one module: the model is wrapped, and the wrapper
    returned, so `model = ait.load(model, "x.ait")` works without `ait.Module` first.

    `trust_native_code=True` loads engines whose artifact is code (AOTInductor packages, Torch-TensorRT
    programs) instead of rebuilding them: only for checkpoints from a trusted source.
    """
    ensure_settings_loaded()
    source = Path(path).expanduser().absolute()
    verify_outer_hash(source)
    wrappers = dict(_wrappers(model_or_pipeline))
    with tempfile.TemporaryDirectory(prefix="aitune-load-") as unpack_dir:
        unpacked = Path(unpack_dir)
        manifest = read_archive(source, unpacked)
        if not wrappers and isinstance(model_or_pipeline, torch.nn.Module) and len(manifest.modules) == 1:
            # `model = ait.load(MyModel(), "x.ait")`: a bare model for a one-module checkpoint is wrapped here.
            model_or_pipeline = Module(model_or_pipeline, manifest.modules[0].name)
            wrappers = {manifest.modules[0].name: runtime_of(model_or_pipeline)}
        # All or nothing: every module is checked, and every engine loaded, before any is installed.
        for entry in manifest.modules:
            rt = wrappers.get(entry.name)
            if rt is None:
                have = ", ".join(sorted(wrappers)) or "none"
                raise CheckpointError(f"{source}: holds module {entry.name!r}, but the model has no ait.Module of "
                                      f"that name (it has: {have})", path=source)
            _check_module(source, entry, rt.module)
        loaded: list[_Loaded] = []
        try:
            for entry in manifest.modules:
                for sig_entry in entry.signatures:
                    with libraries_quiet(), rng_kept():
                        loaded.append(_load_signature(source, unpacked, entry, sig_entry, wrappers[entry.name],
                                                      trust_native_code))
        except BaseException:
            for done in loaded:
                done.release()
            raise
        for done in loaded:
            done.install()
    logger.info("loaded %s: %d module(s)", source, len(manifest.modules))
    return model_or_pipeline


def _check_module(source: Path, entry: ModuleEntry, module: torch.nn.Module) -> None:
    cls = type(module)
    qualname = f"{cls.__module__}.{cls.__qualname__}"
    if qualname != entry.module_class or _fingerprint.structure_digest(module) != entry.structure:
        raise CheckpointError(f"{source}: module {entry.name!r} was saved from a {entry.module_class} of another "
                              f"structure than this {qualname} (layers, settings, forward code or parameter shapes "
                              "differ); tune this model and save again", path=source)
    if _fingerprint.weights_digest(module) != entry.weights:
        raise CheckpointError(f"{source}: module {entry.name!r} has other weights than the ones it was tuned with; "
                              "load the matching weights before ait.load, or tune again", path=source)
    device = _module_device(module)
    if device.type != torch.device(entry.device).type:
        raise CheckpointError(f"{source}: module {entry.name!r} was tuned on {entry.device} but is on {device} "
                              "now; move it first", path=source)


def _load_inputs(source: Path, file: Path) -> tuple[tuple[Any, ...], dict[str, Any]]:
    try:
        check_zip_file(file, Limits.of(global_config))  # a torch.save file is a zip: bounded like the checkpoint
    except ArchiveError as e:
        raise CheckpointError(f"{source}: {e}", path=source) from None
    try:
        data = torch.load(file, weights_only=True)
    except Exception as e:  # whatever torch.load refuses (pickle globals, a damaged zip) refuses the checkpoint
        raise CheckpointError(f"{source}: {file.name} holds something other than plain tensor data; refusing it "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                              path=source) from None
    if (not isinstance(data, dict) or set(data) != {"args", "kwargs"} or not isinstance(data["args"], list)
            or not isinstance(data["kwargs"], dict)):
        raise CheckpointError(f"{source}: {file.name} is not a recorded call", path=source)
    return tuple(data["args"]), data["kwargs"]


def _load_signature(source: Path, unpacked: Path, entry: ModuleEntry, sig_entry: SignatureEntry, rt: ModuleRuntime,
                    trust_native_code: bool) -> _Loaded:
    """Load (or rebuild) and check one signature's engine, ready to install."""
    module = rt.module
    args, kwargs = _load_inputs(source, unpacked / sig_entry.inputs_file)
    try:
        backend = create_backend(sig_entry.backend_name, sig_entry.settings)
    except UnknownBackendError as e:
        raise CheckpointError(f"{source}: module {entry.name!r}: {e}", path=source) from None
    except Exception as e:  # validation of the settings (pydantic, or the backend's own checks)
        raise CheckpointError(f"{source}: module {entry.name!r}: settings of {sig_entry.backend_name} are invalid "
                              f"({e})", path=source) from None
    free_form = _free_form(backend.config)
    if free_form and not trust_native_code:
        # Inductor config options, execution-provider options...: they can name a compiler or a library to run.
        raise CheckpointError(f"{source}: module {entry.name!r}: the {sig_entry.backend_name} settings "
                              f"{', '.join(free_form)} hold free-form options, which can name programs or libraries "
                              "to run; pass trust_native_code=True for a checkpoint you trust", path=source)
    missing = backend.unavailable_reason()
    if missing is not None:
        raise CheckpointError(f"{source}: module {entry.name!r} needs {sig_entry.backend}: {missing}", path=source)
    modes = (tuple((str(d), str(t)) for d, t in sig_entry.autocast), bool(sig_entry.deterministic))
    _check_modes(source, entry.name, modes)
    with torch.set_grad_enabled(sig_entry.grad_enabled), recorded_inference_mode(sig_entry.inference_mode), \
            recorded_modes(modes):
        named = rt.table.normalizer.normalize(args, kwargs)
        key = signature_key(named)
        sig = SignatureRecord.from_call(key, named)
        if [d for d in sig.description] != sig_entry.inputs:
            raise CheckpointError(f"{source}: module {entry.name!r}: recorded inputs do not match their description",
                                  path=source)
        inputs = _tree.clone((args, kwargs))
        with OwnWork():
            outputs = _tree.clone(module.forward(*args, **kwargs))
        after = _tree.clone((args, kwargs)) if not same_values(inputs, (args, kwargs)) else None
        sample = Sample(inputs[0], inputs[1], outputs, after, _tree.nbytes((inputs, outputs)), _tree.shapes_of(named))
        sig.min_shapes = [list(s) for s in sig_entry.min_shapes]
        sig.max_shapes = [list(s) for s in sig_entry.max_shapes]
        sig.observe(_tree.shapes_of(named))
        job = make_job(module, entry.name, sig, [sample], first_device([sample]), [backend], progress=False)
        start = time.perf_counter()
        # Whether loading runs code is the registered class's property; the manifest's own claim is never read.
        can_load = sig_entry.artifact_dir is not None and (trust_native_code or not type(backend).artifact_runs_code)
        if sig_entry.artifact_dir is not None and not can_load:
            logger.info("%s: rebuilding its %s engine instead of loading it: loading would run code from the "
                        "checkpoint (pass trust_native_code=True for a checkpoint you trust)", entry.name,
                        sig_entry.backend)
        engine = None
        if can_load:
            assert sig_entry.artifact_dir is not None
            # The engine may read its files again (to be saved, say): they are copied out of the unpack
            # directory, which goes at the end of load, into one that lives as long as the engine.
            try:
                check_engine_dir(unpacked / sig_entry.artifact_dir, Limits.of(global_config))
            except ArchiveError as e:
                raise CheckpointError(f"{source}: {e}", path=source) from None
            kept = Path(tempfile.mkdtemp(prefix="aitune-engine-"))
            try:
                shutil.copytree(unpacked / sig_entry.artifact_dir, kept, dirs_exist_ok=True)
                with OwnWork():
                    engine = backend.load(kept, module, sig, [sample], job.device, authenticated=False)
                weakref.finalize(engine, shutil.rmtree, kept, True)
            except Exception as e:  # an intact file this environment cannot load (other versions): rebuilt
                shutil.rmtree(kept, ignore_errors=True)
                logger.info("%s: the saved %s engine does not load here (%s: %s); rebuilding it", entry.name,
                            sig_entry.backend, type(e).__name__, str(e)[:200])
                can_load = False
        if engine is None:
            try:
                with OwnWork():
                    engine = backend.build(module, sig, [sample], job.device)
            except Exception as e:  # any build failure is this checkpoint's error, naming the file
                raise CheckpointError(f"{source}: module {entry.name!r}: the {sig_entry.backend} engine could not "
                                      f"be rebuilt ({type(e).__name__}: {str(e)[:300]})", path=source) from e
        with OwnWork():
            result = check(job, backend, engine, build_s=time.perf_counter() - start, measure=False,
                           what="loaded in" if can_load else "rebuilt in")
    if not result.ok:
        raise CheckpointError(f"{source}: module {entry.name!r}: the {sig_entry.backend} engine does not match "
                              f"the model's eager outputs ({result.error}); refusing it", path=source)
    if can_load or backend.kind == "jit":
        # A loaded engine, or a torch.compile one (it recompiles for other sizes), covers the range it was
        # checked on when it was tuned; an AOT engine rebuilt from the one stored call covers that call's shapes.
        sig.engine_range = ([list(s) for s in sig_entry.engine_min_shapes],
                            [list(s) for s in sig_entry.engine_max_shapes])
    else:
        sig.freeze_engine_range([sample])
    result.latency_ms = sig_entry.tuned_latency_ms
    sig.reference = sample
    if backend.kind != "jit":
        # As when tuning: an engine that runs no Python serves only a pure call, and watches what it baked in.
        verdict = purity(module, sig, sample)
        why = verdict.outside or verdict.impure
        if why is not None:
            raise CheckpointError(f"{source}: module {entry.name!r}: its {sig_entry.backend} engine runs no Python, "
                                  f"but {why}; tune it again (ait.tune) rather than loading it", path=source)
        sig.watch = verdict.watch or None
    # The inputs checked above came with the file: the engine also has to match eager on live calls first.
    assert result.engine is not None
    result.engine = on_probation(result.engine, module, sig, job.confirm_calls, job.tolerances, name=entry.name,
                                 origin=f"from {source.name}")
    return _Loaded(rt, sig, result, sig_entry.eager_latency_ms)


@dataclasses.dataclass
class _Loaded:
    """A checked engine waiting for the rest of the checkpoint to load."""

    rt: ModuleRuntime
    sig: SignatureRecord
    result: Any
    eager_latency_ms: float | None

    def install(self) -> None:
        self.rt.install(self.sig, self.result, self.eager_latency_ms)

    def release(self) -> None:
        self.sig.engine = self.result.engine
        drop_engine(self.sig)


def _free_form(value: Any, where: str = "") -> list[str]:
    """The settings (dotted names) holding a non-empty plain mapping: options passed through unvalidated."""
    if isinstance(value, BaseModel):
        return [name for field in type(value).model_fields
                for name in _free_form(getattr(value, field), f"{where}.{field}" if where else field)]
    if isinstance(value, dict):
        return [where] if value else []
    if isinstance(value, (list, tuple)):
        return list(dict.fromkeys(name for item in value for name in _free_form(item, where)))
    return []


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a checkpoint's hashes and manifest without a model; returns a summary (raises CheckpointError)."""
    source = Path(path).expanduser().absolute()
    verify_outer_hash(source)
    with tempfile.TemporaryDirectory(prefix="aitune-verify-") as unpack_dir:
        manifest = read_archive(source, Path(unpack_dir))
    return {"modules": [{"name": m.name, "class": m.module_class,
                         "signatures": [s.backend for s in m.signatures]} for m in manifest.modules],
            "libraries": manifest.libraries, "device_model": manifest.device_model}


_AUTOCAST_DTYPES = ("float16", "bfloat16", "float32")


def _check_modes(source: Path, name: str, modes: tuple[tuple[tuple[str, str], ...], bool]) -> None:
    """The autocast modes a checkpoint names are ones torch has (the file's word is data, not a name to look up
    freely)."""
    for device_type, dtype in modes[0]:
        if device_type not in AUTOCAST_DEVICE_TYPES or dtype not in _AUTOCAST_DTYPES:
            raise CheckpointError(f"{source}: module {name!r}: unknown autocast mode {device_type}/{dtype}",
                                  path=source)
