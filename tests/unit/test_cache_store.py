"""The persistent cache's store: atomic publication, verification on read, LRU eviction, listing, clearing;
and the cache key's sensitivity to everything that changes an engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aitune.torch import _fingerprint, cache
from aitune.torch._signature import _decide, _reuse
from aitune.torch.backend import ONNXRuntimeBackend, TorchEagerBackend, TorchInductorJitBackend
from aitune.torch.cache.__main__ import main as cache_cli
from aitune.torch.cache._store import ENGINE_DIR, ENTRY_FILE, MAC_FILE, EngineStore
from aitune.torch.tune_strategy import HighestThroughputStrategy
from tests.unit.helpers import record

KEY = "a" * 64


def _store(root: Path, max_bytes: int = 1 << 30) -> EngineStore:
    """A store as JIT mode opens one: the directory made and marked, the user's secret made (conftest points
    XDG_CONFIG_HOME at a directory of the test session)."""
    store = cache.open_store(root, create=True, need_secret=True)
    store.max_bytes = max_bytes
    return store


def _engine_writer(payload: bytes):
    def save(directory: Path) -> None:
        (directory / "model.bin").write_bytes(payload)
        (directory / "sub").mkdir()
        (directory / "sub" / "meta.json").write_text("{}")
    return save


def test_publish_then_lookup_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path / "c")
    assert store.lookup(KEY) is None
    assert store.publish(KEY, {"module": "Net", "decision": "tuned", "backend": "X"}, _engine_writer(b"x" * 100))
    hit = store.lookup(KEY)
    assert hit is not None and hit.record["module"] == "Net" and hit.record["artifact"] is True
    assert hit.engine_dir is not None and (hit.engine_dir / "model.bin").read_bytes() == b"x" * 100
    assert set(hit.record["files"]) == {f"{ENGINE_DIR}/model.bin", f"{ENGINE_DIR}/sub/meta.json"}
    assert not any((tmp_path / "c" / "tmp").iterdir()), "the staging directory is left behind"
    assert (hit.path / MAC_FILE).is_file(), "every entry is signed"


def test_second_publisher_of_a_key_keeps_the_first_entry(tmp_path: Path) -> None:
    store = _store(tmp_path / "c")
    assert store.publish(KEY, {"module": "first"}, _engine_writer(b"1"))
    assert not store.publish(KEY, {"module": "second"}, _engine_writer(b"2"))
    hit = store.lookup(KEY)
    assert hit is not None and hit.record["module"] == "first"


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_file", "extra_file", "no_record"])
def test_damaged_entry_is_not_trusted_and_is_removed(tmp_path: Path, damage: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Damage behind a valid signature (a partial write, a truncated file): aitune's own entry, removed."""
    store = _store(tmp_path / "c")
    store.publish(KEY, {"module": "Net"}, _engine_writer(b"weights" * 50))
    entry = store.entries_dir / KEY
    blob = entry / ENGINE_DIR / "model.bin"
    if damage == "flip_byte":
        data = bytearray(blob.read_bytes())
        data[10] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:20])
    elif damage == "delete_file":
        blob.unlink()
    elif damage == "extra_file":
        (entry / ENGINE_DIR / "planted.so").write_bytes(b"\x7fELF")
    else:
        (entry / ENTRY_FILE).unlink()
    assert store.entries(verify=True)[0].valid is False
    with caplog.at_level("WARNING"):
        assert store.lookup(KEY) is None
    assert "not usable" in caplog.text
    assert not entry.exists(), "a damaged entry must be removed so it is rebuilt"


@pytest.mark.parametrize("edit", ["bad_json", "other_key", "edited_decision", "no_signature"])
def test_edited_record_fails_its_signature_and_is_replaced(tmp_path: Path, edit: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """entry.json edited by anyone without the secret: never loaded, and replaced by the next publish."""
    store = _store(tmp_path / "c")
    store.publish(KEY, {"module": "Net", "decision": "eager"}, None)
    entry = store.entries_dir / KEY
    record = json.loads((entry / ENTRY_FILE).read_text())
    if edit == "bad_json":
        (entry / ENTRY_FILE).write_text('{"format": 1, "key": ')
    elif edit == "other_key":
        record["key"] = "b" * 64
        (entry / ENTRY_FILE).write_text(json.dumps(record))
    elif edit == "edited_decision":
        record["decision"] = "tuned"
        (entry / ENTRY_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
    else:
        (entry / MAC_FILE).unlink()
    with caplog.at_level("WARNING"):
        assert store.lookup(KEY) is None
    assert "not loading" in caplog.text and str(entry) in caplog.text
    assert [e.problem for e in store.entries(verify=True)][0] is not None
    assert store.publish(KEY, {"module": "Net", "decision": "eager"}, None)
    assert store.lookup(KEY) is not None


def test_entry_path_outside_the_entry_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "c")
    store.publish(KEY, {"module": "Net"}, _engine_writer(b"w"))
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    record_path = store.entries_dir / KEY / ENTRY_FILE
    record = json.loads(record_path.read_text())
    record["files"]["../../../secret.txt"] = record["files"].pop(f"{ENGINE_DIR}/model.bin")
    record_path.write_bytes(json.dumps(record, indent=1, sort_keys=True).encode())
    store.resign()  # even signed (say, by `cache adopt`), a path outside the entry is refused
    assert store.lookup(KEY) is None
    assert secret.exists()


def test_dead_writers_staging_directories_are_ignored_then_cleaned(tmp_path: Path) -> None:
    store = _store(tmp_path / "c")
    # What a writer killed mid-write leaves: a staging dir named after a process that no longer exists.
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(proc.stdout)
    partial = tmp_path / "c" / "tmp" / f"{KEY[:32]}-{dead_pid}-abcd1234"
    (partial / ENGINE_DIR).mkdir(parents=True)
    (partial / ENGINE_DIR / "model.bin").write_bytes(b"half")
    assert store.lookup(KEY) is None and store.entries() == []
    store.evict()
    assert not partial.exists()


def test_lru_eviction_keeps_the_most_recently_used(tmp_path: Path) -> None:
    store = _store(tmp_path / "c", max_bytes=11_000)
    keys = [c * 64 for c in "abc"]
    for i, key in enumerate(keys):
        store.publish(key, {"module": f"m{i}"}, _engine_writer(b"x" * 3000))
        os.utime(store.entries_dir / key, (1000.0 + i, 1000.0 + i))
    assert store.lookup(keys[0]) is not None  # a hit makes the oldest the most recently used
    store.publish("d" * 64, {"module": "m3"}, _engine_writer(b"x" * 3000))
    left = {i.key for i in store.entries()}
    assert left == {keys[0], keys[2], "d" * 64}, "the least recently used entry (b) should have been evicted"
    assert sum(i.size_bytes for i in store.entries()) <= 11_000


def test_budget_smaller_than_one_entry_keeps_the_new_one(tmp_path: Path) -> None:
    store = _store(tmp_path / "c", max_bytes=100)
    store.publish("a" * 64, {"module": "old"}, _engine_writer(b"x" * 1000))
    store.publish("b" * 64, {"module": "new"}, _engine_writer(b"x" * 1000))
    assert [i.key for i in store.entries()] == ["b" * 64]


def test_list_and_clear_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "c"
    store = _store(root)
    store.publish(KEY, {"module": "Net", "decision": "tuned", "backend": "ONNXRuntimeBackend"}, _engine_writer(b"x"))
    assert cache_cli(["list", "--dir", str(root), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "1 entry" in out and "Net" in out and "ONNXRuntimeBackend" in out and "INVALID" not in out
    assert cache_cli(["list", "--dir", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["key"] == KEY
    assert cache_cli(["clear", "--dir", str(root)]) == 0
    assert "cleared 1 entry" in capsys.readouterr().out
    assert cache.entries(root) == []
    assert sorted(p.name for p in root.iterdir()) == [".aitune-cache", "CACHEDIR.TAG", "engines-v1", "lock", "tmp"]


def test_cli_without_a_directory_says_how_to_name_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cache_cli(["list"]) == 2
    assert "AITUNE_JIT_CACHE_DIR" in capsys.readouterr().err


def test_cli_reads_the_env_var(tmp_path: Path) -> None:
    root = tmp_path / "c"
    env = {**os.environ, "AITUNE_JIT_CACHE_DIR": str(root)}
    _store(root).publish(KEY, {"module": "Net", "decision": "eager"})
    proc = subprocess.run([sys.executable, "-m", "aitune.torch.cache", "list", "--verify"], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert str(root) in proc.stdout and "eager" in proc.stdout and "INVALID" not in proc.stdout


# the key

class _Net(torch.nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


def _key(net: torch.nn.Module, backends: list, shapes: tuple[int, ...] = (2, 4)) -> str:
    sig, samples = record(net, [((torch.randn(*shapes),), {})])
    job = _decide.make_job(net, "Net", sig, samples, torch.device("cpu"), backends)
    return _reuse.digest(_reuse.key_fields(job, HighestThroughputStrategy()))


def test_key_changes_with_everything_that_changes_an_engine() -> None:
    torch.manual_seed(0)
    net = _Net()
    base = _key(net, [TorchEagerBackend()])
    assert _key(net, [TorchEagerBackend()]) == base, "the key must be stable"
    assert _key(net, [TorchEagerBackend()], shapes=(3, 4)) != base, "shape range"
    assert _key(net, [TorchInductorJitBackend()]) != base, "backend"
    assert _key(net, [TorchInductorJitBackend(mode="max-autotune")]) != _key(net, [TorchInductorJitBackend()]), \
        "backend settings"
    assert _key(_Net(hidden=16), [TorchEagerBackend()]) != base, "structure"
    with torch.no_grad():
        net.fc.bias[0] += 1e-3
    assert _key(net, [TorchEagerBackend()]) != base, "weights changed in place"
    net.fc.bias = torch.nn.Parameter(net.fc.bias.detach().clone())
    assert _key(net, [TorchEagerBackend()]) == _key(net, [TorchEagerBackend()])


def test_key_covers_library_versions_and_device() -> None:
    net = _Net()
    sig, samples = record(net, [((torch.randn(2, 4),), {})])
    job = _decide.make_job(net, "Net", sig, samples, torch.device("cpu"), [ONNXRuntimeBackend()])
    fields = _reuse.key_fields(job, HighestThroughputStrategy())
    assert fields["libraries"]["torch"] == torch.__version__ and "onnxruntime" in fields["libraries"]
    assert fields["device"] == _fingerprint.device_model(torch.device("cpu"))


def test_weight_digest_is_the_same_in_another_process(tmp_path: Path) -> None:
    code = ("import torch; from aitune.torch._fingerprint import weights_digest, structure_digest;"
            "torch.manual_seed(3); m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7));"
            "print(weights_digest(m), structure_digest(m))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].split()) == 2


def test_structure_digest_sees_forward_code() -> None:
    class A(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * 2

    class B(A):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * 3

    B.__qualname__ = A.__qualname__
    B.__name__ = A.__name__
    assert _fingerprint.structure_digest(A()) != _fingerprint.structure_digest(B())


def test_weights_digest_costs_one_pass_per_tensor_version() -> None:
    net = torch.nn.Linear(1024, 1024)
    first = _fingerprint.weights_digest(net)
    start = time.perf_counter()
    for _ in range(100):
        assert _fingerprint.weights_digest(net) == first
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("strategy", ["one_backend", "fastest"])
def test_shared_tuning_step_stores_then_reuses(tmp_path: Path, strategy: str) -> None:
    """Through `_decide.run`, as JIT mode and ait.tune call it: the second lookup reuses the decision, whether the
    strategy brings its own backend object or tries the job's."""
    from aitune.torch.config import config as global_config
    from aitune.torch.tune_strategy import OneBackendStrategy

    global_config.min_speedup = 1e-6
    net = _Net().eval()
    x = torch.randn(2, 4)
    store = _store(tmp_path / "c")
    outcomes = []
    for _ in range(2):
        sig, samples = record(net, [((x,), {})] * 3)
        chosen = (OneBackendStrategy(ONNXRuntimeBackend()) if strategy == "one_backend"
                  else HighestThroughputStrategy())
        job = _decide.make_job(net, "Net", sig, samples, torch.device("cpu"), [ONNXRuntimeBackend()])
        outcomes.append(_decide.run(job, chosen, store))
    assert [o.cache for o in outcomes] == ["stored", "hit"]
    reused = outcomes[1].winner
    assert reused is not None and reused.ok and reused.engine is not None
    with torch.no_grad():  # the grad mode it was recorded and tuned in (part of its signature)
        torch.testing.assert_close(reused.engine(x), net(x))


def test_a_library_version_change_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an upgrade of torch (or any backend library) the stored decision is not found: it is tuned again."""
    from aitune.torch.config import config as global_config

    global_config.min_speedup = 1e-6
    net = _Net().eval()
    store = _store(tmp_path / "c")

    def tune_once() -> str | None:
        sig, samples = record(net, [((torch.randn(2, 4),), {})] * 3)
        job = _decide.make_job(net, "Net", sig, samples, torch.device("cpu"), [TorchEagerBackend()])
        return _decide.run(job, HighestThroughputStrategy(), store).cache

    assert tune_once() == "stored"
    assert tune_once() == "hit"
    upgraded = {**_fingerprint.library_versions(), "torch": "99.0.0"}
    monkeypatch.setattr(_fingerprint, "library_versions", lambda: upgraded)
    assert tune_once() == "stored"
    assert len(store.entries()) == 2


def test_explicit_tune_uses_the_cache_too(tmp_path: Path) -> None:
    import aitune.torch as ait
    from aitune.torch._explicit._module import runtime_of
    from aitune.torch.config import config as global_config
    from aitune.torch.jit.config import config as jit_config

    global_config.min_speedup = 1e-6
    jit_config.cache_dir = tmp_path / "c"
    torch.manual_seed(0)
    net = _Net().eval()
    caches = []
    for _ in range(2):  # as two processes would: a fresh wrapper each time
        model = ait.Module(net, "net", strategy=ait.OneBackendStrategy(ONNXRuntimeBackend()))
        ait.tune(model, [torch.randn(2, 4) for _ in range(3)])
        [sig] = runtime_of(model).signatures.values()
        caches.append(sig.cache)
        assert sig.status == "tuned"
    assert caches == ["stored", "hit"]
