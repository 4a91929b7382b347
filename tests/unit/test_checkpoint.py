"""`ait.save` / `ait.load` for real: round trips per backend that runs on a CPU, the `sha256sum` file, and
checkpoints that were tampered with, do not fit the model, or carry a pickle payload (all must be refused with a
CheckpointError naming the file, installing nothing and running nothing).

One ONNX Runtime checkpoint is built per test module (about 2 s) and copied for each test that damages it.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import aitune.torch as ait
from aitune.torch._explicit._checkpoint import MANIFEST, sums_path
from aitune.torch._explicit._module import ModuleRuntime, runtime_of
from aitune.torch._settings._sources import reset_settings
from aitune.torch.backend import (
    Backend,
    ONNXRuntimeBackend,
    TorchEagerBackend,
    TorchInductorAotBackend,
    TorchInductorJitBackend,
)
from aitune.torch.config import config as global_config
from aitune.torch.tune_strategy import OneBackendStrategy

from .helpers import Block, payload_is_live, plant

TOL: dict[str, Any] = {"rtol": 1e-4, "atol": 1e-5}
NAME = "mlp"
#: How a refusal names the checkpoint and its sums file (see `refused`).
AIT, SUMS = "<dir>/x.ait", "<dir>/x_sha256_sums.txt"


def _fast_settings() -> None:
    """CPU timings of tiny models are noise: accept any correct engine, and time briefly (conftest resets)."""
    global_config.min_speedup = 1e-6
    global_config.timing_warmup = 0
    global_config.timing_iterations = 3
    global_config.timing_max_seconds = 0.5


@pytest.fixture(autouse=True)
def _fast() -> Iterator[None]:
    """Fast settings for every test (module-scoped fixtures call _fast_settings too)."""
    _fast_settings()
    yield


class Parent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem: torch.nn.Module = torch.nn.Linear(16, 16)  # wrapped by the tests
        self.block: torch.nn.Module = Block(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


def one(backend: Backend) -> OneBackendStrategy:
    return OneBackendStrategy(backend)


def dataset() -> list[torch.Tensor]:
    return [torch.randn(8, 16) for _ in range(3)]


def twin(module: torch.nn.Module) -> torch.nn.Module:
    """A freshly built module of the same class with the same weights (what a new process would load)."""
    copy = type(module)().eval()
    copy.load_state_dict(module.state_dict())
    return copy


def rt_of(wrapper: Any) -> ModuleRuntime:
    rt = runtime_of(wrapper)
    assert rt is not None, f"{type(wrapper).__name__} is not an ait.Module"
    return rt


def only_sig(wrapper: Any) -> Any:
    sigs = list(rt_of(wrapper).signatures.values())
    assert len(sigs) == 1, sigs
    return sigs[0]


def assert_served(wrapper: Any, eager: torch.nn.Module) -> None:
    """The loaded wrapper matches eager and its engine served the call (tune records under no_grad, and grad
    mode is part of a signature)."""
    x = torch.randn(8, 16)
    sig = only_sig(wrapper)
    assert sig.status == "tuned" and sig.engine is not None
    before = sig.engine_calls
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), eager(x), **TOL)
    assert sig.engine_calls == before + 1


def assert_untouched(wrapper: Any) -> None:
    rt = rt_of(wrapper)
    assert rt.signatures == {} and rt.state == "passthrough"


def round_trip(backend: Backend, tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """Tune a Block with `backend` alone and save it; returns the eager module and the checkpoint."""
    net = Block(16).eval()
    m = ait.Module(net, NAME, strategy=one(backend))
    ait.tune(m, dataset())
    assert only_sig(m).status == "tuned", only_sig(m).reason
    return net, ait.save(m, tmp_path / "x.ait")


# -- the archive, opened and resealed as an attacker would ---------------------------------------------------------

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def members(ckpt: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(ckpt) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def reseal(ckpt: Path) -> None:
    """Rewrite the sums file for the archive as it is now."""
    sums_path(ckpt).write_text(f"{sha256(ckpt.read_bytes())}  {ckpt.name}\n", encoding="utf-8")


def rewrite(ckpt: Path, edit: Callable[[dict[str, bytes], dict[str, Any]], None], *, rehash: bool = True) -> None:
    """Let `edit` change the members and the manifest, rebuild the zip and reseal it. With `rehash`, the manifest's
    per-member sha256 is recomputed for every member it lists, so only the check under test can refuse it."""
    files = members(ckpt)
    manifest = json.loads(files.pop(MANIFEST))
    edit(files, manifest)
    if rehash:
        manifest["files"] = {name: sha256(files[name]) if name in files else digest
                             for name, digest in manifest["files"].items()}
    with zipfile.ZipFile(ckpt, "w") as zf:
        zf.writestr(MANIFEST, json.dumps(manifest))
        for name, data in files.items():
            zf.writestr(name, data)
    reseal(ckpt)


def first_sig(manifest: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = manifest["modules"][0]["signatures"][0]
    return entry


# -- one ONNX Runtime checkpoint, shared ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[torch.nn.Module, Path]]:
    """(the eager Block, a pristine checkpoint of it tuned with ONNX Runtime). The Block stays alive for the
    module, so a twin's weights never share its tensors' addresses."""
    pytest.importorskip("onnxruntime")
    _fast_settings()
    try:
        net, ckpt = round_trip(ONNXRuntimeBackend(), tmp_path_factory.mktemp("saved"))
    finally:
        reset_settings()
    yield net, ckpt


@pytest.fixture
def ckpt(saved: tuple[torch.nn.Module, Path], tmp_path: Path) -> Path:
    """A private copy of the shared checkpoint and its sums file, to damage."""
    _, source = saved
    shutil.copy2(source, tmp_path / source.name)
    shutil.copy2(sums_path(source), sums_path(tmp_path / source.name))
    return tmp_path / source.name


@pytest.fixture
def target(saved: tuple[torch.nn.Module, Path]) -> Any:
    """A wrapper of the right name around a fresh twin: what a refused load must leave as it was."""
    return ait.Module(twin(saved[0]), NAME)


def refused(target: Any, ckpt: Path, *fragments: str, **kwargs: Any) -> ait.CheckpointError:
    with pytest.raises(ait.CheckpointError) as info:
        ait.load(target, ckpt, **kwargs)
    # The folder is left out: pytest names it after the test, which would match most fragments on its own.
    message = str(info.value).replace(str(ckpt.parent), "<dir>")
    for fragment in fragments:
        assert fragment in message, message
    assert_untouched(target)
    return info.value


# -- round trips ---------------------------------------------------------------------------------------------------

def test_onnxruntime_round_trip_loads_the_saved_engine(saved: tuple[torch.nn.Module, Path], ckpt: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    net, _ = saved
    names = set(members(ckpt))
    assert {MANIFEST, "modules/0/0/inputs.pt", "modules/0/0/engine/model.onnx"} <= names

    def no_build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("ait.load rebuilt an ONNX Runtime engine instead of loading it")

    monkeypatch.setattr(ONNXRuntimeBackend, "build", no_build)
    fresh = twin(net)
    with caplog.at_level(logging.INFO, logger="aitune"):
        m = ait.load(fresh, ckpt)  # a bare module: wrapped, and the wrapper returned
    assert isinstance(m, ait.Module) and m.__wrapped__ is fresh and rt_of(m).name == NAME
    assert "loaded in" in caplog.text and "rebuilt in" not in caplog.text
    assert rt_of(m).state == "tuned" and only_sig(m).backend == "ONNXRuntimeBackend"
    assert_served(m, net)
    wide = torch.randn(5, 16)  # outside the saved engine range: eager, and correct
    with torch.no_grad():
        torch.testing.assert_close(m(wide), net(wide))
    assert only_sig(m).engine_calls == 1


def test_load_into_an_existing_wrapper_returns_it(saved: tuple[torch.nn.Module, Path], ckpt: Path,
                                                  target: Any) -> None:
    assert ait.load(target, ckpt) is target
    assert_served(target, saved[0])


@pytest.mark.parametrize("backend", [TorchEagerBackend, TorchInductorJitBackend])
def test_jit_backend_round_trip_rebuilds(backend: type[Backend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    net, ckpt = round_trip(backend(), tmp_path)
    assert not any("/engine/" in name for name in members(ckpt))  # JIT engines have no artifact
    builds: list[str] = []
    build = backend.build

    def counting_build(self: Backend, *args: Any, **kwargs: Any) -> Any:
        builds.append(self.name)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(backend, "build", counting_build)
    with caplog.at_level(logging.INFO, logger="aitune"):
        m = ait.load(twin(net), ckpt)
    assert builds == [backend.__name__]
    assert "rebuilt in" in caplog.text
    assert only_sig(m).backend == backend.__name__
    assert_served(m, net)


@pytest.fixture(scope="module")
def saved_parent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Parent, Path]]:
    """A parent whose `stem` (ONNX Runtime) and `block` (eager) are wrapped with their own strategies."""
    pytest.importorskip("onnxruntime")
    _fast_settings()
    try:
        parent = Parent().eval()
        parent.stem = ait.Module(parent.stem, "stem", strategy=one(ONNXRuntimeBackend()))
        parent.block = ait.Module(parent.block, "block", strategy=one(TorchEagerBackend()))
        ait.tune(parent, dataset())
        assert only_sig(parent.stem).backend == "ONNXRuntimeBackend"
        assert only_sig(parent.block).backend == "TorchEagerBackend"
        ckpt = ait.save(parent, tmp_path_factory.mktemp("parent") / "x.ait")
    finally:
        reset_settings()
    yield parent, ckpt


def fresh_parent(source: Parent, stem: str = "stem", block: str = "block") -> Parent:
    parent = Parent().eval()
    parent.load_state_dict(source.state_dict())  # the wrappers keep the state_dict keys
    parent.stem = ait.Module(parent.stem, stem)
    parent.block = ait.Module(parent.block, block)
    return parent


def test_two_wrapped_submodules_round_trip(saved_parent: tuple[Parent, Path]) -> None:
    source, ckpt = saved_parent
    parent = fresh_parent(source)
    assert ait.load(parent, ckpt) is parent
    assert only_sig(parent.stem).backend == "ONNXRuntimeBackend"
    assert only_sig(parent.block).backend == "TorchEagerBackend"
    x = torch.randn(8, 16)
    with torch.no_grad():
        want = Parent.forward(source, x)
        torch.testing.assert_close(parent(x), want, **TOL)
    assert only_sig(parent.stem).engine_calls == 1 and only_sig(parent.block).engine_calls == 1


def test_a_missing_wrapper_among_several_installs_none(saved_parent: tuple[Parent, Path]) -> None:
    source, ckpt = saved_parent
    parent = fresh_parent(source, block="tail")
    with pytest.raises(ait.CheckpointError, match=r"'block'.*it has: stem, tail"):
        ait.load(parent, ckpt)
    assert_untouched(parent.stem)  # loading is all or nothing, not up to the first module that fails
    assert_untouched(parent.block)


@pytest.fixture(scope="module")
def saved_aot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[torch.nn.Module, Path]]:
    """(the eager Block, a checkpoint of it tuned with AOTInductor), built once (an AOTInductor compile is slow)."""
    from aitune.torch.backend import _inductor_aot

    reason = TorchInductorAotBackend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    _fast_settings()
    try:
        net, ckpt = round_trip(TorchInductorAotBackend(), tmp_path_factory.mktemp("saved-aot"))
    except AssertionError:
        # torch 2.11+cu130 on the GPU machine kills any process that loads a package: the candidate is rejected.
        if _inductor_aot.CHILD_LOADS.crash_reason("cpu"):
            pytest.skip(f"this torch cannot load AOTInductor packages: {_inductor_aot.CHILD_LOADS.crash_reason('cpu')}")
        raise
    finally:
        reset_settings()
    yield net, ckpt


def copy_of(ckpt: Path, tmp_path: Path) -> Path:
    shutil.copy2(ckpt, tmp_path / ckpt.name)
    shutil.copy2(sums_path(ckpt), sums_path(tmp_path / ckpt.name))
    return tmp_path / ckpt.name


@pytest.mark.slow
def test_inductor_aot_rebuilt_unless_trusted(saved_aot: tuple[torch.nn.Module, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    net, source = saved_aot
    ckpt = copy_of(source, tmp_path)
    manifest = json.loads(members(ckpt)[MANIFEST])
    assert first_sig(manifest)["artifact_runs_code"] is True
    assert any(name.startswith("modules/0/0/engine/") for name in members(ckpt))

    # Untrusted (the default): the package is native code, so it is never loaded; the engine is rebuilt.
    loads: list[Path] = []

    def no_load(self: Backend, directory: Path, *args: Any, **kwargs: Any) -> Any:
        loads.append(directory)  # a raise alone would be taken for "does not load here" and rebuilt
        raise AssertionError("ait.load loaded native code from an untrusted checkpoint")

    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="aitune"):
        patch.setattr(TorchInductorAotBackend, "load", no_load)
        m = ait.load(twin(net), ckpt)
    assert loads == []
    assert "trust_native_code=True" in caplog.text and "rebuilt in" in caplog.text
    assert_served(m, net)

    # Trusted: the package is loaded, never rebuilt.
    def no_build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("ait.load rebuilt an engine it was trusted to load")

    caplog.clear()
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="aitune"):
        patch.setattr(TorchInductorAotBackend, "build", no_build)
        trusted = ait.load(twin(net), ckpt, trust_native_code=True)
    assert "loaded in" in caplog.text and "rebuilt in" not in caplog.text
    assert_served(trusted, net)


@pytest.mark.slow
def test_a_planted_library_never_runs_whatever_the_manifest_says(saved_aot: tuple[torch.nn.Module, Path],
                                                                 tmp_path: Path, payload: tuple[Path, Path],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The author swaps the package's .so for one with a constructor, declares the artifact harmless
    (`artifact_runs_code: false`) and loaded safely in this very environment, and reseals every hash: the
    decision is the backend class's, so the package is rebuilt, never opened."""
    from aitune.torch.backend import _inductor_aot

    library, marker = payload
    net, source = saved_aot
    ckpt = copy_of(source, tmp_path)
    package_name = "modules/0/0/engine/model.pt2"
    forged = tmp_path / "forged.pt2"
    forged.write_bytes(members(ckpt)[package_name])
    plant(forged, library)
    payload_is_live(forged, marker)

    def declare_harmless(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        files[package_name] = forged.read_bytes()
        meta = json.loads(files["modules/0/0/engine/aitune_aot.json"])
        meta["loaded_safely_in"] = _inductor_aot._environment()
        files["modules/0/0/engine/aitune_aot.json"] = json.dumps(meta).encode()
        first_sig(manifest)["artifact_runs_code"] = False

    rewrite(ckpt, declare_harmless)
    _inductor_aot.reset()
    with caplog.at_level(logging.INFO, logger="aitune"):
        m = ait.load(twin(net), ckpt)
    assert not marker.exists(), "the planted library ran"
    assert "rebuilt in" in caplog.text and "trust_native_code=True" in caplog.text
    assert_served(m, net)


# -- the sums file -------------------------------------------------------------------------------------------------

def test_sums_file_works_with_sha256sum(ckpt: Path) -> None:
    sums = sums_path(ckpt)
    assert sums.name == "x_sha256_sums.txt"
    assert sums.read_text() == f"{sha256(ckpt.read_bytes())}  x.ait\n"
    tool = shutil.which("sha256sum")
    if tool is None:
        return
    ok = subprocess.run([tool, "-c", sums.name], cwd=ckpt.parent, capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "x.ait: OK" in ok.stdout, ok.stdout + ok.stderr
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    bad = subprocess.run([tool, "-c", sums.name], cwd=ckpt.parent, capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "FAILED" in bad.stdout


# -- tampering ---------------------------------------------------------------------------------------------------

def test_flipped_byte_is_refused(ckpt: Path, target: Any) -> None:
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    error = refused(target, ckpt, AIT, "x_sha256_sums.txt", "does not match")
    assert error.path == ckpt


def test_truncated_archive_is_refused(ckpt: Path, target: Any) -> None:
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert refused(target, ckpt, AIT, "truncated").path == ckpt


def test_missing_sums_file_is_refused(ckpt: Path, target: Any) -> None:
    sums_path(ckpt).unlink()
    assert refused(target, ckpt, f"{SUMS}: missing").path == sums_path(ckpt)


@pytest.mark.parametrize(("line", "names", "fragment"), [
    ("0" * 64 + "  x.ait", "ait", "recorded in x_sha256_sums.txt"),
    ("{digest}  other.ait", "sums", "has no sha256 line for x.ait"),
    ("not a sums line", "sums", "has no sha256 line for x.ait"),
])
def test_sums_file_without_the_right_hash_is_refused(ckpt: Path, target: Any, line: str, names: str,
                                                     fragment: str) -> None:
    sums_path(ckpt).write_text(line.format(digest=sha256(ckpt.read_bytes())) + "\n")
    error = refused(target, ckpt, f"{AIT if names == 'ait' else SUMS}: ", fragment)
    assert error.path == (ckpt if names == "ait" else sums_path(ckpt))


def test_member_changed_behind_a_recomputed_sums_file_is_refused(ckpt: Path, target: Any) -> None:
    def alter_weights(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        name = "modules/0/0/engine/model.onnx.data"
        if name not in files:
            name = "modules/0/0/engine/model.onnx"
        data = bytearray(files[name])
        data[-1] ^= 0x01
        files[name] = bytes(data)

    rewrite(ckpt, alter_weights, rehash=False)  # the outer hash is right again; the manifest's is not
    refused(target, ckpt, AIT, "modules/0/0/engine/model.onnx", "does not match its sha256 in manifest.json")


def test_unlisted_member_is_refused(ckpt: Path, target: Any) -> None:
    def add(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        files["modules/0/0/engine/extra.so"] = b"\x7fELF"

    rewrite(ckpt, add)
    refused(target, ckpt, AIT, "does not list", "modules/0/0/engine/extra.so")


@pytest.mark.parametrize("where", ["member", "inputs_file", "artifact_dir"])
@pytest.mark.parametrize("path", ["../escaped-{uid}.bin", "modules/../../escaped-{uid}.bin", "/tmp/escaped-{uid}.bin"])
def test_path_outside_the_archive_is_refused(ckpt: Path, target: Any, where: str, path: str) -> None:
    bad = path.format(uid=f"{os.getpid()}-{ckpt.parent.name}")
    escaped = Path(bad).name

    def point_outside(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        if where == "member":
            files[bad] = b"payload"
            manifest["files"][bad] = ""  # rehashed by rewrite
        else:
            first_sig(manifest)[where] = bad

    rewrite(ckpt, point_outside)
    refused(target, ckpt, AIT, f"refusing {'member ' if where == 'member' else ''}path {bad!r}")
    for folder in (Path(tempfile.gettempdir()), ckpt.parent, ckpt.parent.parent, Path("/tmp")):
        assert not (folder / escaped).exists()


def test_unregistered_backend_is_refused_and_never_imported(ckpt: Path, target: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    package = tmp_path / "site"
    package.mkdir()
    (package / "aitune_ckpt_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Backend: pass\n")
    monkeypatch.syspath_prepend(str(package))
    for name in ("os.system", "aitune_ckpt_evil.Backend"):
        def name_it(files: dict[str, bytes], manifest: dict[str, Any], name: str = name) -> None:
            first_sig(manifest)["backend_name"] = name

        rewrite(ckpt, name_it)
        refused(target, ckpt, AIT, "unknown backend", repr(name), "ONNXRuntimeBackend")
    assert not marker.exists() and "aitune_ckpt_evil" not in sys.modules


@pytest.mark.parametrize(("backend", "settings"), [
    ("TorchInductorJitBackend", {"options": {"cpp.cxx": [None, "{evil}"], "fx_graph_cache": False}}),
    ("TorchInductorAotBackend", {"inductor_configs": {"cpp.cxx": [None, "{evil}"], "fx_graph_cache": False}}),
    ("ONNXRuntimeBackend", {"providers": [["CPUExecutionProvider", {"plugin": "{evil}"}]]}),
])
def test_free_form_options_need_trust(ckpt: Path, target: Any, tmp_path: Path, backend: str,
                                      settings: dict[str, Any]) -> None:
    """A compiler named in Inductor's config (or a library in provider options) runs at load: the settings
    are as much code as the engine, so an untrusted checkpoint may not set them."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil-cxx.sh"
    evil.write_text(f'#!/bin/sh\ntouch {marker}\nexec g++ "$@"\n')
    evil.chmod(0o755)

    def swap_backend(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        sig = first_sig(manifest)
        sig["backend_name"] = sig["backend"] = backend
        sig["kind"], sig["artifact_dir"], sig["artifact_runs_code"] = "jit", None, False
        sig["settings"] = json.loads(json.dumps(settings).replace("{evil}", str(evil)))
        for name in [n for n in files if "/engine/" in n]:
            del files[name]
            del manifest["files"][name]

    rewrite(ckpt, swap_backend)
    refused(target, ckpt, AIT, "free-form options", "trust_native_code=True")
    assert not marker.exists()


@pytest.mark.parametrize(("where", "fragment"), [
    ("top", "surprise"), ("module", "modules.0.surprise"), ("signature", "modules.0.signatures.0.surprise"),
    ("settings", "surprise"),
])
def test_unknown_field_is_refused(ckpt: Path, target: Any, where: str, fragment: str) -> None:
    def add_field(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        {"top": manifest, "module": manifest["modules"][0], "signature": first_sig(manifest),
         "settings": first_sig(manifest)["settings"]}[where]["surprise"] = 1

    rewrite(ckpt, add_field)
    refused(target, ckpt, AIT, fragment)


def test_newer_format_version_says_to_upgrade(ckpt: Path, target: Any) -> None:
    def bump(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        manifest["version"] += 1
        manifest["new_field_of_version_2"] = {}

    rewrite(ckpt, bump)
    refused(target, ckpt, AIT, "version 2", "upgrade aitune")


def test_not_a_checkpoint_is_refused(ckpt: Path, target: Any) -> None:
    with zipfile.ZipFile(ckpt, "w") as zf:
        zf.writestr("hello.txt", "hi")
    reseal(ckpt)
    refused(target, ckpt, AIT, "manifest.json")
    ckpt.write_bytes(b"not a zip at all")
    reseal(ckpt)
    refused(target, ckpt, AIT, "not a readable checkpoint")


# -- bounded reads -------------------------------------------------------------------------------------------------

def _bomb(ckpt: Path, name: str, size: int) -> None:
    """Add a listed member of `size` zero bytes, deflated (about 1000x), streamed so the test holds no copy."""
    files = members(ckpt)
    manifest = json.loads(files.pop(MANIFEST))
    files.pop(name, None)
    digest = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(size // len(block)):
        digest.update(block)
    manifest["files"][name] = digest.hexdigest()
    with zipfile.ZipFile(ckpt, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest))
        for member, data in files.items():
            zf.writestr(member, data)
        with zf.open(name, "w", force_zip64=True) as out:
            for _ in range(size // len(block)):
                out.write(block)
    reseal(ckpt)


def test_a_zip_bomb_is_refused_before_anything_is_inflated(ckpt: Path, target: Any) -> None:
    import tracemalloc

    _bomb(ckpt, "modules/0/0/engine/model.onnx.data", 512 << 20)
    assert ckpt.stat().st_size < 4 << 20
    tracemalloc.start()
    try:
        error = refused(target, ckpt, AIT, "modules/0/0/engine/model.onnx.data", "archive_max_ratio", "zip bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"refusing the bomb took {peak / 2**20:.0f} MiB of memory"
    assert error.path == ckpt


def test_a_member_whose_header_lies_about_its_size_stops_there(ckpt: Path, target: Any) -> None:
    """Headers say 1 KiB, the data inflates to 64 MiB: reading stops at the declared size (a CRC mismatch)."""
    import tracemalloc

    name = "modules/0/0/engine/model.onnx.data"
    _bomb(ckpt, name, 64 << 20)
    data = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as zf:
        info = zf.getinfo(name)
    for offset in _size_fields(data, info):
        data[offset:offset + 8] = (1024).to_bytes(8, "little")
    ckpt.write_bytes(bytes(data))
    reseal(ckpt)
    tracemalloc.start()
    try:
        refused(target, ckpt, AIT, name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB"


def _size_fields(data: bytearray, info: zipfile.ZipInfo) -> list[int]:
    """Offsets of the zip64 uncompressed-size fields of `info` (local header and central directory)."""
    name = info.filename.encode()
    found = []
    start = 0
    while (i := data.find(name, start)) != -1:
        start = i + 1
        for sig in (b"PK\x03\x04", b"PK\x01\x02"):
            header = data.rfind(sig, 0, i)
            if header == -1 or i - header not in (30, 46):
                continue
            extra_len = int.from_bytes(data[header + (28 if sig == b"PK\x03\x04" else 30):][:2], "little")
            extra = i + len(name)
            end = extra + extra_len
            while extra + 4 <= end:
                tag = int.from_bytes(data[extra:extra + 2], "little")
                length = int.from_bytes(data[extra + 2:extra + 4], "little")
                if tag == 1:  # zip64: uncompressed size first
                    found.append(extra + 4)
                extra += 4 + length
    assert found, "no zip64 size field found"
    return found


def test_archive_limits_are_settings(ckpt: Path, target: Any) -> None:
    from aitune.torch.config import config

    config.archive_max_members = 2
    refused(target, ckpt, AIT, "more than archive_max_members=2")
    config.archive_max_members = 10_000
    config.archive_max_member_bytes = 100
    refused(target, ckpt, AIT, "archive_max_member_bytes")
    config.archive_max_member_bytes = 32 << 30
    ait.load(target, ckpt)  # within the defaults


def test_a_bomb_inside_the_recorded_inputs_is_refused(ckpt: Path, target: Any, tmp_path: Path) -> None:
    """inputs.pt is itself a zip (torch.save): it is held to the same limits before torch.load opens it."""
    bomb = tmp_path / "inputs.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data/0", "w") as out:
            for _ in range(256):
                out.write(bytes(1 << 20))

    def plant_bomb(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        files["modules/0/0/inputs.pt"] = bomb.read_bytes()

    rewrite(ckpt, plant_bomb)
    refused(target, ckpt, AIT, "inputs.pt", "archive_max_ratio")


# -- live confirmation -----------------------------------------------------------------------------------------

def test_an_engine_matching_only_the_stored_inputs_is_dropped_on_a_live_call(
        saved: tuple[torch.nn.Module, Path], ckpt: Path, target: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The author ships another model's engine and stored inputs on which both agree (zeros: only the bias
    counts). The load check passes; the first live call finds it out, gets eager's result, and drops it."""
    net, _ = saved
    impostor = twin(net)
    with torch.no_grad():
        impostor.fc.weight.mul_(-3.0)
    wrapped = ait.Module(impostor, NAME, strategy=one(ONNXRuntimeBackend()))
    ait.tune(wrapped, dataset())
    theirs = ait.save(wrapped, tmp_path / "impostor" / "x.ait")

    def swap(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        for name, data in members(theirs).items():
            if "/engine/" in name:
                files[name] = data
        files["modules/0/0/inputs.pt"] = _torch_save({"args": [torch.zeros(8, 16)], "kwargs": {}})

    rewrite(ckpt, swap)
    ait.load(target, ckpt)
    sig = only_sig(target)
    assert sig.status == "tuned", "the stored inputs were chosen to pass the load check"
    x = torch.randn(8, 16)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="aitune"):
        torch.testing.assert_close(target(x), net(x), **TOL)
        torch.testing.assert_close(target(x), net(x), **TOL)
    # Dropped; the signature is undecided again (a later ait.tune tunes it afresh) and the wrapper runs eagerly.
    assert sig.status == "recording" and sig.engine is None and "dropped on a live call" in (sig.reason or "")
    assert rt_of(target).state == "passthrough"
    assert "x.ait" in caplog.text and "differ from eager on a live call" in caplog.text


def test_a_good_engine_serves_alone_after_its_live_confirmation(saved: tuple[torch.nn.Module, Path], ckpt: Path,
                                                                target: Any, caplog: pytest.LogCaptureFixture) -> None:
    from aitune.torch._signature._confirm import LiveCheck

    net, _ = saved
    ait.load(target, ckpt)
    sig = only_sig(target)
    assert isinstance(sig.engine, LiveCheck)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="aitune"):
        for _ in range(global_config.confirm_calls + 1):
            x = torch.randn(8, 16)
            torch.testing.assert_close(target(x), net(x), **TOL)
    assert sig.engine is not None and not isinstance(sig.engine, LiveCheck)
    assert "matched eager on 3 live call(s)" in caplog.text


def test_hooks_run_once_per_call_while_an_engine_is_confirmed(saved: tuple[torch.nn.Module, Path], ckpt: Path,
                                                              target: Any) -> None:
    from aitune.torch._signature._confirm import LiveCheck

    net, _ = saved
    ait.load(target, ckpt)
    sig = only_sig(target)
    assert isinstance(sig.engine, LiveCheck)
    seen: list[str] = []
    target.register_forward_pre_hook(lambda m, a: seen.append("pre"))
    target.register_forward_hook(lambda m, a, out: out * 2)
    calls = global_config.confirm_calls + 2  # on probation, then served alone
    with torch.no_grad():
        for _ in range(calls):
            x = torch.randn(8, 16)
            torch.testing.assert_close(target(x), net(x) * 2, **TOL)
    assert seen == ["pre"] * calls and not isinstance(sig.engine, LiveCheck)


def test_onnx_external_data_outside_the_model_is_never_read(saved: tuple[torch.nn.Module, Path], ckpt: Path,
                                                           target: Any, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """An ONNX file whose weights point at another file of the user's (`../../..`): refused by our check, the
    engine is rebuilt from the recorded inputs instead."""
    import onnx

    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(4096))

    def point_outside(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        name = "modules/0/0/engine/model.onnx"
        model = onnx.load_from_string(files[name])
        for init in model.graph.initializer:
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            del init.external_data[:]
            init.external_data.add(key="location", value=f"../../../../../../../../..{secret}")
        files[name] = model.SerializeToString()
        files.pop("modules/0/0/engine/model.onnx.data", None)
        manifest["files"].pop("modules/0/0/engine/model.onnx.data", None)

    rewrite(ckpt, point_outside)
    with caplog.at_level(logging.INFO, logger="aitune"):
        m = ait.load(target, ckpt)
    assert "not a file beside the model" in caplog.text and "rebuilding it" in caplog.text
    assert_served(m, saved[0])


# -- a checkpoint of another model -------------------------------------------------------------------------------

def test_other_weights_are_refused(ckpt: Path) -> None:
    other = ait.Module(Block(16).eval(), NAME)
    refused(other, ckpt, AIT, "'mlp'", "other weights")


def test_other_structure_is_refused(saved: tuple[torch.nn.Module, Path], ckpt: Path) -> None:
    module = twin(saved[0])
    module.fc = torch.nn.Linear(16, 33)
    refused(ait.Module(module, NAME), ckpt, AIT, "'mlp'", "another structure")
    refused(ait.Module(torch.nn.Linear(16, 16).eval(), NAME), ckpt, AIT, "another structure")  # another class


def test_weights_check_survives_a_reused_tensor_address(saved: tuple[torch.nn.Module, Path], ckpt: Path) -> None:
    net, _ = saved
    for _ in range(5):
        decoy = ait.Module(twin(Block(16).eval()), NAME)  # other weights, built exactly as a twin is
        refused(decoy, ckpt, "other weights")
        del decoy
        gc.collect()
        ait.load(twin(net), ckpt)  # most likely where the decoy's weights lay: it must load all the same


def test_no_wrapper_of_the_saved_name_lists_those_it_has(saved: tuple[torch.nn.Module, Path], ckpt: Path) -> None:
    other = ait.Module(twin(saved[0]), "encoder")
    refused(other, ckpt, AIT, "'mlp'", "it has: encoder")
    parent = Parent().eval()  # no wrapper at all, and the checkpoint's module is not its structure either
    with pytest.raises(ait.CheckpointError, match="another structure"):
        ait.load(parent, ckpt)


# -- pickle payloads -----------------------------------------------------------------------------------------------

class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def _torch_save(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


PAYLOADS: dict[str, tuple[Callable[[Path], bytes], Callable[[bytes], Any]]] = {
    # (make the payload for a marker path, how an unsafe reader would open it: proves the payload is live)
    "torch.save of Path.touch": (lambda m: _torch_save(_Touch(m)),
                                 lambda b: torch.load(io.BytesIO(b), weights_only=False)),
    "torch.save of os.system inside a recorded call": (
        lambda m: _torch_save({"args": [torch.zeros(8, 16), _Shell(m)], "kwargs": {}}),
        lambda b: torch.load(io.BytesIO(b), weights_only=False)),
    "plain pickle of Path.touch": (lambda m: pickle.dumps(_Touch(m), protocol=2), pickle.loads),
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_pickle_payload_in_inputs_is_never_run(ckpt: Path, target: Any, tmp_path: Path, kind: str) -> None:
    make, unsafe_open = PAYLOADS[kind]
    proof = tmp_path / "proof"
    unsafe_open(make(proof))
    assert proof.exists(), "the payload is not live; this test would prove nothing"

    marker = tmp_path / "pwned"

    def plant(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
        files["modules/0/0/inputs.pt"] = make(marker)

    rewrite(ckpt, plant)  # the attacker controls the manifest's hashes and the sums file too
    refused(target, ckpt, AIT, "inputs.pt", "refusing")
    assert not marker.exists()


# -- saving ------------------------------------------------------------------------------------------------------

def test_save_with_nothing_to_save_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.ait"
    with pytest.raises(ait.CheckpointError, match="no ait.Module") as info:
        ait.save(Block(16).eval(), path)
    assert info.value.path == path
    untuned = ait.Module(Block(16).eval(), NAME)
    with pytest.raises(ait.CheckpointError, match="ait.tune"):
        ait.save(untuned, path)
    twice = Parent().eval()
    twice.stem = ait.Module(twice.stem, "same")
    twice.block = ait.Module(twice.block, "same")
    with pytest.raises(ait.CheckpointError, match="share a name"):
        ait.save(twice, path)
    assert list(tmp_path.iterdir()) == []


def test_a_loaded_model_saves_again(saved: tuple[torch.nn.Module, Path], ckpt: Path, target: Any,
                                    tmp_path: Path) -> None:
    net, _ = saved
    ait.load(target, ckpt)
    engine = only_sig(target).engine
    again = ait.save(target, tmp_path / "again" / "x.ait")  # the loaded engine still has its files
    assert set(members(again)) == set(members(ckpt))
    assert_served(ait.load(twin(net), again), net)
    assert_served(target, net)
    # The loaded engine's files go with it.
    folder = Path(engine.model_dir)
    assert folder.is_dir()
    alive = weakref.ref(engine)
    target.enable_passthrough(force=True)
    del engine
    gc.collect()
    assert alive() is None and not folder.exists()


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = Block(16).eval()
    target = ait.Module(net, NAME, strategy=one(TorchEagerBackend()))
    ait.tune(target, dataset())
    path = ait.save(target, tmp_path / "x.ait")
    assert path == tmp_path / "x.ait"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ait", "x_sha256_sums.txt"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space left"):
        patch.setattr(zipfile.ZipFile, "write", disk_full)
        ait.save(target, tmp_path / "x.ait")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old checkpoint, intact
    reloaded = ait.load(twin(net), tmp_path / "x.ait")
    assert_served(reloaded, net)
