"""The cache's trust rules, tried as an attacker and as a careless user would: whose directory it is, what is in it,
what aitune may delete there, the secret that signs entries, forged entries, and directories that cannot be used.

Every attack asserts that nothing ran, nothing of the user's was touched, and the refusal names the file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import torch

from aitune.torch import _fingerprint, cache
from aitune.torch._errors import CacheError
from aitune.torch._signature import _decide
from aitune.torch.backend import Backend, Engine, ONNXRuntimeBackend, TorchInductorAotBackend
from aitune.torch.cache import _directory, _store
from aitune.torch.cache.__main__ import main as cache_cli
from aitune.torch.cache._store import ENGINE_DIR, ENTRY_FILE
from aitune.torch.config import config as global_config
from aitune.torch.jit.config import config as jit_config
from aitune.torch.tune_strategy import OneBackendStrategy
from tests.unit.helpers import Block, payload_is_live, plant, record

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (links as their target text), with file contents: to prove nothing changed."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, names in os.walk(root):
        for name in dirnames + names:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            found[rel] = (b"->" + os.readlink(p).encode()) if p.is_symlink() else (
                p.read_bytes() if p.is_file() else None)
    return found


def victim(tmp_path: Path) -> Path:
    """A user's directory holding things aitune's cleaner would delete if it wandered there: old subdirectories,
    names like the writer's staging dirs, a dead process's pid."""
    v = tmp_path / "victim"
    for name in ("old-1234-x", f"{'a' * 32}-999999-abcd1234", "removed-" + "b" * 32 + "-abcd1234", "notes"):
        (v / name).mkdir(parents=True)
        (v / name / "precious.txt").write_text(f"user data in {name}")
        old = time.time() - 3 * 24 * 3600
        os.utime(v / name, (old, old))
    (v / "file.txt").write_text("keep me")
    return v


def made_store(root: Path) -> _store.EngineStore:
    return cache.open_store(root, create=True, need_secret=True)


# -- the directory -------------------------------------------------------------------------------------------------

def test_a_new_directory_is_made_private_and_marked(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "cache"
    store = made_store(root)
    assert store.root == root.resolve()
    assert (root.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in root.iterdir()) == [".aitune-cache", "CACHEDIR.TAG"]
    assert json.loads((root / ".aitune-cache").read_text())["aitune_cache"] == 1
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_an_empty_directory_is_adopted(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir(mode=0o755)
    made_store(root)
    assert (root / ".aitune-cache").is_file()


def test_a_project_directory_is_refused_and_nothing_in_it_is_touched(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('hi')")
    for name in ("tmp/run-1234-x", "tmp/" + "c" * 32 + "-999999-abcd1234", "torch/fxgraph", "engines-v1/" + "d" * 64):
        (project / name).mkdir(parents=True)
        (project / name / "data.bin").write_bytes(b"mine")
    before = tree(project)
    with pytest.raises(CacheError) as info:
        made_store(project)
    assert str(project) in str(info.value) and "not an aitune cache" in str(info.value)
    assert "train.py" in str(info.value)
    for command in (["clear"], ["list"], ["evict", "--max-bytes", "0"], ["adopt"]):
        assert cache_cli([*command, "--dir", str(project)]) == 2
        assert "not an aitune cache" in capsys.readouterr().err
    assert tree(project) == before


def test_a_marked_directory_holding_foreign_files_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    made_store(root)
    (root / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match=r"holds notes.txt, which aitune did not put there") as info:
        made_store(root)
    assert info.value.path == root.resolve()
    assert cache_cli(["clear", "--dir", str(root)]) == 2
    assert (root / "notes.txt").read_text() == "mine"


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    made_store(root)
    root.chmod(0o777)
    with pytest.raises(CacheError, match=r"mode 0777: others can write it.*chmod go-w"):
        made_store(root)
    root.chmod(0o755)
    made_store(root)  # readable by others is fine: only writing matters


@pytest.mark.skipif(not ROOT, reason="changing a directory's owner needs root")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    made_store(root)
    os.chown(root, 65534, 65534)
    with pytest.raises(CacheError, match=r"is owned by .*uid 65534.*not by you"):
        made_store(root)


def test_a_linked_tmp_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """The cleaner used to follow a `tmp` link and delete the target's old subdirectories."""
    root = tmp_path / "c"
    store = made_store(root)
    store.publish("e" * 64, {"module": "m"}, None)
    v = victim(tmp_path)
    before = tree(v)
    shutil.rmtree(root / "tmp")
    (root / "tmp").symlink_to(v)
    with pytest.raises(CacheError, match=r"tmp is a symbolic link") as info:
        made_store(root)
    assert info.value.path == root.resolve() / "tmp"
    # Even a store object made before the link appeared never follows it.
    store.evict()
    with pytest.raises(CacheError, match="cannot write it"):
        store.publish("f" * 64, {"module": "m"}, None)
    store.clear()
    assert cache_cli(["clear", "--dir", str(root)]) == 2
    assert tree(v) == before


def test_linked_lock_and_entries_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "c"
    store = made_store(root)
    v = victim(tmp_path)
    before = tree(v)
    (root / "lock").unlink(missing_ok=True)
    (root / "lock").symlink_to(v / "file.txt")  # a file lock opened through it would truncate the target
    with pytest.raises(CacheError, match=r"lock is a symbolic link"):
        made_store(root)
    (root / "lock").unlink()
    (root / "engines-v1").mkdir(exist_ok=True)
    (root / "engines-v1" / ("a" * 64)).symlink_to(v / "notes")
    assert store.lookup("a" * 64) is None
    assert store.entries() == []
    store.clear()
    assert tree(v) == before


def test_a_link_inside_an_entry_is_refused(tmp_path: Path) -> None:
    store = made_store(tmp_path / "c")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")

    def save(directory: Path) -> None:
        (directory / "model.bin").write_bytes(b"w")

    store.publish("a" * 64, {"module": "m"}, save)
    engine = store.entries_dir / ("a" * 64) / ENGINE_DIR
    (engine / "model.bin").unlink()
    (engine / "model.bin").symlink_to(outside)
    store.resign()  # even signed, a link is never followed
    assert store.lookup("a" * 64) is None
    assert outside.read_bytes() == b"secret"


@pytest.mark.parametrize("where", ["under_a_file", "in_proc", "not_a_directory"])
def test_an_unusable_directory_is_one_warning_and_no_cache(tmp_path: Path, where: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("x")
    path = {"under_a_file": tmp_path / "file" / "cache", "in_proc": Path("/proc/aitune-test/cache"),
            "not_a_directory": tmp_path / "file"}[where]
    jit_config.cache_dir = path
    with caplog.at_level(logging.WARNING, logger="aitune"):
        assert cache.configured_store(jit_config) is None
        assert cache.configured_store(jit_config) is None
    warnings = [r for r in caplog.records if "not using the cache" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage(), caplog.text
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(ROOT, reason="root writes read-only directories anyway")
def test_a_read_only_directory_is_one_warning_and_no_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "ro"
    made_store(root)
    root.chmod(0o500)
    try:
        jit_config.cache_dir = root
        with caplog.at_level(logging.WARNING, logger="aitune"):
            assert cache.configured_store(jit_config) is None
        assert "not writable" in caplog.text and str(root) in caplog.text
    finally:
        root.chmod(0o700)


def test_a_failing_write_disables_the_cache_for_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A full disk while publishing: one warning, the decision still serves, nothing half-written remains."""
    global_config.min_speedup = 1e-6
    store = made_store(tmp_path / "c")
    net = Block(8).eval()

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(_store, "_write_synced", full)
    sig, samples = record(net, [((torch.randn(2, 8),), {})] * 3)
    job = _decide.make_job(net, "Block", sig, samples, torch.device("cpu"), [ONNXRuntimeBackend()])
    with caplog.at_level(logging.WARNING, logger="aitune"):
        outcome = _decide.run(job, OneBackendStrategy(ONNXRuntimeBackend()), store)
    assert outcome.winner is not None and outcome.winner.engine is not None
    assert "No space left on device" in caplog.text and "running without the cache" in caplog.text
    assert store.disabled is not None and store.lookup("a" * 64) is None
    assert list((tmp_path / "c" / "tmp").iterdir()) == []


def test_torch_compile_caches_are_left_where_torch_keeps_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aitune neither redirects nor switches PyTorch's own caches (pickles and code it loads unchecked)."""
    from aitune.torch.jit import enable_jit_tuning

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("AITUNE_JIT_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("AITUNE_JIT_LOG_LEVEL", "OFF")
    enable_jit_tuning()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".aitune-cache", "CACHEDIR.TAG"]


# -- the secret ----------------------------------------------------------------------------------------------------

def test_the_secret_is_made_private_outside_the_cache(tmp_path: Path, config_home: Path) -> None:
    made_store(tmp_path / "c")
    secret = config_home / "aitune" / "cache-secret"
    assert secret.is_file() and (secret.stat().st_mode & 0o777) == 0o600
    assert (secret.parent.stat().st_mode & 0o077) == 0
    assert len(secret.read_bytes()) == _directory.SECRET_BYTES


@pytest.mark.parametrize("problem", ["readable_by_others", "inside_the_cache", "dir_writable_by_others", "a_link",
                                     "too_short"])
def test_an_unsafe_secret_is_refused(tmp_path: Path, problem: str, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "c"
    secret_dir = tmp_path / "keys"
    secret_dir.mkdir(mode=0o700)
    secret = secret_dir / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    if problem == "readable_by_others":
        secret.chmod(0o644)
        fragment = "chmod 600"
    elif problem == "inside_the_cache":
        made_store(root)
        secret = root / "engines-v1" / "secret"
        secret.parent.mkdir()
        secret.write_bytes(os.urandom(32))
        secret.chmod(0o600)
        fragment = "inside the cache directory"
    elif problem == "dir_writable_by_others":
        secret_dir.chmod(0o777)
        fragment = "chmod go-w"
    elif problem == "a_link":
        target = tmp_path / "elsewhere"
        target.write_bytes(os.urandom(32))
        target.chmod(0o600)
        secret.unlink()
        secret.symlink_to(target)
        fragment = "symbolic link"
    else:
        secret.write_bytes(b"short")
        fragment = "too short"
    jit_config.cache_dir = root
    jit_config.cache_secret_file = secret
    with caplog.at_level(logging.WARNING, logger="aitune"):
        assert cache.configured_store(jit_config) is None
    assert fragment in caplog.text and str(secret) in caplog.text, caplog.text


# -- forged entries ------------------------------------------------------------------------------------------------

def _tune(net: torch.nn.Module, x: torch.Tensor, backend: object, store: _store.EngineStore) -> object:
    sig, samples = record(net, [((x,), {})] * 3)
    job = _decide.make_job(net, "Block", sig, samples, torch.device("cpu"), [backend])  # type: ignore[list-item]
    return _decide.run(job, OneBackendStrategy(backend), store)  # type: ignore[arg-type]


def _rehash(entry: Path) -> None:
    """What a careful forger does: every file's sha256 in entry.json made right again (entry.mac left as is)."""
    record_path = entry / ENTRY_FILE
    data = json.loads(record_path.read_text())
    data["files"] = {rel: _fingerprint.file_sha256(entry / rel) for rel in data["files"]}
    record_path.write_text(json.dumps(data, indent=1, sort_keys=True))


def test_a_self_consistent_forged_onnx_entry_is_never_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A forged engine (another model's ONNX file) behind correct file hashes: refused on its signature."""
    pytest.importorskip("onnxruntime")
    global_config.min_speedup = 1e-6
    global_config.confirm_calls = 0  # the signature alone must stop it
    torch.manual_seed(0)
    net, other = Block(8).eval(), Block(8).eval()
    x = torch.randn(2, 8)
    store = made_store(tmp_path / "c")
    assert _tune(net, x, ONNXRuntimeBackend(), store).cache == "stored"
    [entry] = store.entries()
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    forger = cache.open_store(tmp_path / "c2", create=True, need_secret=True)
    _tune(other, x, ONNXRuntimeBackend(), forger)
    [theirs] = forger.entries()
    for f in (entry.path / ENGINE_DIR).iterdir():
        shutil.copyfile(theirs.path / ENGINE_DIR / f.name, f)
    _rehash(entry.path)
    with caplog.at_level(logging.WARNING, logger="aitune"):
        outcome = _tune(net, x, ONNXRuntimeBackend(), store)
    assert outcome.cache == "stored", "the forged entry must be replaced by a fresh tuning"
    assert "not loading" in caplog.text and str(entry.path) in caplog.text and "signature" in caplog.text
    winner = outcome.winner
    with torch.no_grad():
        torch.testing.assert_close(winner.engine(x), net(x))


@pytest.mark.slow
def test_a_forged_aotinductor_entry_never_runs_its_library(tmp_path: Path, payload: tuple[Path, Path],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A planted .so with a constructor, a note that packages load safely here, and correct file hashes: nothing
    of it runs, because the entry's signature does not verify."""
    from aitune.torch.backend import _inductor_aot

    reason = TorchInductorAotBackend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    library, marker = payload
    global_config.min_speedup = 1e-6
    net = Block(8).eval()
    x = torch.randn(4, 8)
    store = made_store(tmp_path / "c")
    first = _tune(net, x, TorchInductorAotBackend(), store)
    if first.winner is None:
        pytest.skip(f"this torch cannot load AOTInductor packages: {_inductor_aot.CHILD_LOADS.crashed}")
    [entry] = store.entries()
    package = entry.path / ENGINE_DIR / "model.pt2"
    plant(package, library)
    meta_path = entry.path / ENGINE_DIR / "aitune_aot.json"
    meta = json.loads(meta_path.read_text())
    meta["loaded_safely_in"] = _inductor_aot._environment()
    meta_path.write_text(json.dumps(meta))
    _rehash(entry.path)
    payload_is_live(package, marker)

    _inductor_aot.reset()
    with caplog.at_level(logging.WARNING, logger="aitune"):
        second = _tune(net, x, TorchInductorAotBackend(), store)
    assert not marker.exists(), "the planted library ran"
    assert "not loading" in caplog.text and str(entry.path) in caplog.text
    assert second.cache == "stored"


def test_adopt_signs_a_cache_made_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache directory copied from another machine (another secret) is not loaded until the user adopts it."""
    global_config.min_speedup = 1e-6
    net = Block(8).eval()
    x = torch.randn(2, 8)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-machine"))
    elsewhere = made_store(tmp_path / "made-elsewhere")
    assert _tune(net, x, ONNXRuntimeBackend(), elsewhere).cache == "stored"
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "this-machine"))
    shutil.copytree(tmp_path / "made-elsewhere", tmp_path / "copied", symlinks=True)
    here = made_store(tmp_path / "copied")
    [entry] = here.entries()
    assert here.lookup(entry.key) is None, "a cache signed with another secret must not load"
    assert cache_cli(["adopt", "--dir", str(tmp_path / "copied")]) == 0
    assert here.lookup(entry.key) is not None
    assert _tune(net, x, ONNXRuntimeBackend(), here).cache == "hit"


class _Touch:
    """A pickle payload: unpickling it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (Path(self.marker),))


class _PickledEngine(Engine):
    bakes_weights = True

    def __init__(self, module: torch.nn.Module, blob: bytes) -> None:
        self.module = module
        self.blob = blob

    def __call__(self, *args: object, **kwargs: object) -> object:
        return torch.nn.Module._wrapped_call_impl(self.module, *args, **kwargs)

    def save(self, directory: Path) -> None:
        (directory / "program.pkl").write_bytes(self.blob)


class PickleLoadingBackend(Backend):
    """At the seam: an AOT backend whose artifact is a pickle, loaded as Torch-TensorRT loads its programs."""

    kind = "aot"
    artifact_runs_code = True

    def build(self, module: torch.nn.Module, signature: object, samples: object, device: torch.device) -> Engine:
        return _PickledEngine(module, pickle.dumps({"program": "ok"}))

    def load(self, directory: Path, module: torch.nn.Module, signature: object, samples: object,
             device: torch.device, *, authenticated: bool = False) -> Engine:
        blob = (directory / "program.pkl").read_bytes()
        pickle.loads(blob)  # noqa: S301 - the point of the test: only a signed entry may get here
        return _PickledEngine(module, blob)


def test_a_pickle_payload_planted_in_an_entry_is_never_unpickled(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    global_config.min_speedup = 1e-6
    marker = tmp_path / "pwned"
    net = Block(8).eval()
    x = torch.randn(2, 8)
    store = made_store(tmp_path / "c")
    assert _tune(net, x, PickleLoadingBackend(), store).cache == "stored"
    [entry] = store.entries()
    (entry.path / ENGINE_DIR / "program.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    _rehash(entry.path)
    with caplog.at_level(logging.WARNING, logger="aitune"):
        assert _tune(net, x, PickleLoadingBackend(), store).cache == "stored"
    assert not marker.exists(), "the planted pickle was loaded"
    assert "not loading" in caplog.text and str(entry.path) in caplog.text

    # The signature is the only thing in the way: the same payload in an entry that verifies is unpickled.
    [entry] = store.entries()
    (entry.path / ENGINE_DIR / "program.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    _rehash(entry.path)
    store.resign()
    _tune(net, x, PickleLoadingBackend(), store)
    assert marker.exists(), "the payload is not live; this test would prove nothing"


# -- found by trying to break it (red-team round) --------------------------------------------------------------------

@pytest.mark.skipif(not ROOT, reason="giving a parent directory to another user needs root")
def test_a_cache_whose_parent_another_user_owns_is_refused(tmp_path: Path) -> None:
    """Whoever owns a parent can rename the cache away and put theirs in its place between aitune's checks and
    its reads (the race a red-team run used to load a planted library from a signed-looking cache)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    made_store(shared / "cache")
    os.chown(shared, 65534, 65534)
    with pytest.raises(CacheError, match=r"lies in .*shared, which belongs to .*uid 65534") as info:
        made_store(shared / "cache")
    assert info.value.path == shared


def test_a_cache_whose_parent_others_can_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    made_store(shared / "cache")
    shared.chmod(0o777)
    with pytest.raises(CacheError, match=r"lies in .*shared, which has mode 0777.*chmod go-w"):
        made_store(shared / "cache")
    shared.chmod(0o1777)  # like /tmp: nobody else can rename what is not theirs
    made_store(shared / "cache")


def test_a_tilde_path_of_no_user_is_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from aitune.torch._settings._sources import load_settings

    monkeypatch.setenv("AITUNE_JIT_CACHE_DIR", "~nosuchuser-aitune/cache")
    load_settings()  # not a configuration error: the cache is unusable, the script runs
    with caplog.at_level(logging.WARNING, logger="aitune"):
        assert cache.configured_store(jit_config) is None
    assert "~nosuchuser-aitune" in caplog.text and "cannot expand" in caplog.text
    assert not any(tmp_path.iterdir()) and not Path("~nosuchuser-aitune").exists()
    assert cache_cli(["list", "--dir", "~nosuchuser-aitune/c"]) == 2
    assert "cannot expand" in capsys.readouterr().err


def test_the_secret_is_never_made_inside_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "c"
    made_store(root)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root))
    jit_config.cache_dir = root
    with caplog.at_level(logging.WARNING, logger="aitune"):
        assert cache.configured_store(jit_config) is None
    assert "would lie inside the cache directory" in caplog.text
    assert sorted(p.name for p in root.iterdir()) == [".aitune-cache", "CACHEDIR.TAG"], "nothing may be created"


def test_a_relative_config_home_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", ".")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _directory.default_secret_file() == tmp_path / "home" / ".config" / "aitune" / "cache-secret"


def test_a_readable_secret_says_others_can_read_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "keys" / "secret"
    secret.parent.mkdir(mode=0o700)
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o644)
    jit_config.cache_dir = tmp_path / "c"
    jit_config.cache_secret_file = secret
    with caplog.at_level(logging.WARNING, logger="aitune"):
        assert cache.configured_store(jit_config) is None
    assert "others can read it" in caplog.text and "chmod 600" in caplog.text


def test_an_entry_holding_a_link_never_breaks_listing_or_eviction(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = made_store(tmp_path / "c")

    def save(directory: Path) -> None:
        (directory / "model.bin").write_bytes(b"w" * 100)

    store.publish("a" * 64, {"module": "m"}, save)
    (store.entries_dir / ("a" * 64) / ENGINE_DIR / "link").symlink_to("/etc/hostname")
    assert [e.valid for e in store.entries()] == [False]
    store.max_bytes = 1
    assert store.publish("b" * 64, {"module": "n"}, save), "a bad entry must not stop publishing"
    assert cache_cli(["list", "--dir", str(tmp_path / "c")]) == 0
    assert "INVALID" in capsys.readouterr().out
    assert cache_cli(["evict", "--dir", str(tmp_path / "c"), "--max-bytes", "0"]) == 0
    assert Path("/etc/hostname").exists()


def test_overlapping_members_are_refused_before_inflating(tmp_path: Path) -> None:
    """One deflate stream quoted by two central-directory entries: the second's data overlaps the first's."""
    from aitune.torch._archive import Limits, check_zip_file
    from aitune.torch._errors import ArchiveError

    path = tmp_path / "overlap.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a", bytes(4 << 20))
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x01\x02")
    end = data.find(b"PK\x05\x06")
    record = bytes(data[start:end])
    assert record.endswith(b"a"), "the central-directory record should end with the member's name"
    twin = record[:-1] + b"b"  # the name alone: an "a" byte may also stand in its time, size or CRC fields
    eocd = bytearray(data[end:])
    count = int.from_bytes(eocd[10:12], "little") + 1
    eocd[8:10] = eocd[10:12] = count.to_bytes(2, "little")
    eocd[12:16] = (len(record) * 2).to_bytes(4, "little")
    path.write_bytes(bytes(data[:end]) + twin + bytes(eocd))
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["a", "b"], "the crafted archive should list both members"
    limits = Limits(max_members=10, max_member_bytes=1 << 30, max_bytes=1 << 30, max_ratio=10_000)
    with pytest.raises(ArchiveError, match="overlaps the next one"):
        check_zip_file(path, limits)


def test_a_crashing_package_from_a_file_does_not_stop_this_process_building(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    from aitune.torch._errors import TuningError
    from aitune.torch.backend import _inductor_aot

    monkeypatch.setattr(_inductor_aot, "_CHILD_LOAD", "import os; os.abort()")
    package = tmp_path / "model.pt2"
    package.write_bytes(b"not loaded here")
    with pytest.raises(TuningError, match="killed a test process"):
        _inductor_aot._load_safely(package, torch.device("cpu"), built_here=False)
    assert _inductor_aot.CHILD_LOADS.crash_reason("cpu") is None


def test_external_data_in_functions_and_sparse_constants_is_checked(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from aitune.torch.backend._onnx import check_external_data

    outside = tmp_path / "secret.bin"
    outside.write_bytes(bytes(16))
    model_dir = tmp_path / "m"
    model_dir.mkdir()

    def external(name: str) -> TensorProto:
        t = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=f"../{outside.name}")
        return t

    const = helper.make_node("Constant", [], ["c"], value=external("w"))
    function = helper.make_function("custom", "F", [], ["c"], [const], [helper.make_opsetid("", 17)])
    call = helper.make_node("F", [], ["y"], domain="custom")
    graph = helper.make_graph([call], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    onnx.save_model(model, str(model_dir / "model.onnx"))
    with pytest.raises(ValueError, match="not a file beside the model"):
        check_external_data(model_dir / "model.onnx")
