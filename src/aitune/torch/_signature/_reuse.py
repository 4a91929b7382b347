"""Reusing decisions: the persistent cache's part of deciding a signature (the key, reusing a stored decision,
storing a new one), and decisions shared by identical modules within one process.

`decide_shared(job, strategy, store)` first asks the process's memory (`SHARED`): a module of the same class and
structure, with the same signature, candidates and settings, decided already (a model built in a loop, the
layers of a stack that aitune tunes one by one) hands its decision over, weights aside. Its winner is built for
this module and checked against this module's own samples (no timing, no other candidate); a mismatch tunes
afresh. Without such a decision, the persistent cache (if configured), then the strategy decide.

`decide_with_cache(job, strategy, store)` asks the store first. A cached decision is reused only after its engine
(loaded from disk for AOT backends, rebuilt for JIT ones) matched the eager outputs of this process's own
samples; it then serves on probation (`_confirm.LiveCheck`) until it has also matched eager on the first live
calls, and a mismatch there forgets the entry. A cached "stays eager" is reused as is. Otherwise the strategy
tunes, and its decision is stored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aitune.torch import _fingerprint
from aitune.torch._archive import Limits, check_engine_dir
from aitune.torch._errors import CacheError, TuningError
from aitune.torch._signature._confirm import on_probation
from aitune.torch._signature._route import CALLERS
from aitune.torch.config import config as global_config
from aitune.torch.tune_strategy._base import TuneJob, TuneOutcome, TuneStrategy, check

if TYPE_CHECKING:
    from aitune.torch.backend._base import Backend, Engine
    from aitune.torch.cache._store import EngineStore, Hit

logger = logging.getLogger(__name__)


@dataclass
class Remembered:
    """A decision kept in memory for identical modules (shaped like the cache's `Hit` for `_reuse`)."""

    key: str
    record: dict[str, Any]
    engine_dir: Path | None = None


class SharedDecisions:
    """Decisions of this process, by `shared_fields` digest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, Remembered] = {}

    def get(self, key: str) -> Remembered | None:
        with self._lock:
            return self._by_key.get(key)

    def remember(self, key: str, job: TuneJob, outcome: TuneOutcome, backends: Sequence[Backend]) -> None:
        if not outcome.candidates:
            return
        with self._lock:
            self._by_key[key] = Remembered(key, decision_record(job, outcome, backends))

    def forget(self, key: str) -> None:
        with self._lock:
            self._by_key.pop(key, None)

    def reset(self) -> None:
        with self._lock:
            self._by_key.clear()


SHARED = SharedDecisions()


def reset() -> None:
    """Forget the decisions shared in this process (for tests)."""
    SHARED.reset()


def shared_fields(job: TuneJob, strategy: TuneStrategy) -> dict[str, Any]:
    """What must agree for a decision to pass from one module to another in this process: the cache's key fields
    without the weights, the sizes seen and the library versions (the same process)."""
    fields = key_fields(job, strategy)
    for name in ("weights", "inputs", "libraries"):
        fields.pop(name)
    fields["inputs"] = [dict(d) for d in job.signature.description]
    return fields


def decide_shared(job: TuneJob, strategy: TuneStrategy, store: EngineStore | None) -> TuneOutcome:
    """The persistent cache's decision (when a cache is configured); else that of an identical module of this
    process, built and checked here; else the strategy's. A new decision is stored and remembered."""
    def share_or_tune() -> TuneOutcome:
        try:
            key = digest(shared_fields(job, strategy))
        except Exception as e:  # a module the key cannot describe is decided on its own
            logger.debug("%s: no shared-decision key (%s: %s)", job.name, type(e).__name__, e)
            return strategy.tune(job)
        seen = SHARED.get(key)
        if seen is not None:
            reused = _reuse(job, seen, tried_backends(job, strategy), forget=lambda: SHARED.forget(key), shared=True)
            if reused is not None:
                return reused
        outcome = strategy.tune(job)
        if outcome.winner is not None or not CALLERS.several():
            SHARED.remember(key, job, outcome, tried_backends(job, strategy))
        return outcome

    return share_or_tune() if store is None else decide_with_cache(job, strategy, store, share_or_tune)


def decide_with_cache(job: TuneJob, strategy: TuneStrategy, store: EngineStore,
                      tune: Callable[[], TuneOutcome] | None = None) -> TuneOutcome:
    """The stored decision for the job, reused and checked; else `tune()`'s (the strategy's by default), stored."""
    tune = tune or (lambda: strategy.tune(job))
    try:
        fields = key_fields(job, strategy)
        key = digest(fields)
    except Exception as e:  # a module the key cannot describe (an odd extra_repr, say) is tuned without the cache
        logger.info("%s: no cache key (%s: %s); tuning without the cache", job.name, type(e).__name__, e)
        return tune()
    hit = job.peeked[1] if job.peeked is not None and job.peeked[0] == key else _lookup(store, key, job.name)
    if hit is not None:
        reused = _reuse(job, hit, tried_backends(job, strategy), forget=lambda: _forget(store, key))
        if reused is not None:
            return reused
        _forget(store, key)
    outcome = tune()
    _store(store, key, fields, job, outcome, tried_backends(job, strategy))
    return outcome


def key_fields(job: TuneJob, strategy: TuneStrategy) -> dict[str, Any]:
    """Everything that changes the engine or the decision, as plain data (readable in entry.json)."""
    module = job.module
    sig = job.signature
    return {
        "module_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "structure": _fingerprint.structure_digest(module),
        "weights": _fingerprint.weights_digest(module),
        "signature": repr(sig.key),
        "inputs": [{**d, "min": list(lo), "max": list(hi)}
                   for d, lo, hi in zip(sig.description, sig.min_shapes, sig.max_shapes)],
        "backends": [{"name": b.name, "kind": b.kind, "settings": b.engine_settings()}
                     for b in tried_backends(job, strategy)],
        "strategy": f"{type(strategy).__module__}.{type(strategy).__qualname__}",
        "tolerances": {k: list(v) for k, v in sorted(job.tolerances.items())},
        "min_speedup": job.min_speedup,
        "libraries": _fingerprint.library_versions(),
        "device": _fingerprint.device_model(job.device),
        "device_name": str(job.device),
    }


def tried_backends(job: TuneJob, strategy: TuneStrategy) -> list[Backend]:
    """The backends the strategy will try: its own when it names them (OneBackendStrategy), else the job's."""
    own = getattr(strategy, "backends", None)
    return list(own) if own is not None else list(job.backends)


def digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _lookup(store: EngineStore, key: str, name: str) -> Hit | None:
    try:
        return store.lookup(key)
    except Exception as e:  # an unreadable store is a miss, never a failed call
        logger.warning("aitune cache: reading %s failed (%s: %s); tuning %s again", store.root, type(e).__name__, e,
                       name)
        return None


def peek(store: EngineStore, key: str) -> Hit | None:
    """The verified entry of `key`, or None (also when the store cannot be read: the lookup that follows says so)."""
    try:
        return store.lookup(key)
    except Exception:
        return None


def _forget(store: EngineStore, key: str) -> None:
    try:
        store.remove(key)
    except Exception:  # a stale entry left behind is removed by the next publish of its key
        logger.debug("removing cache entry %s failed", key, exc_info=True)


def _reuse(job: TuneJob, hit: Hit | Remembered, backends: Sequence[Backend],
           forget: Callable[[], None], *, shared: bool = False) -> TuneOutcome | None:
    """The cached (or, `shared`, an identical module's) decision, once its engine matched eager on this module's
    samples; None to tune again. An engine from the cache then serves on probation; `forget` drops the entry if a
    live call finds it wrong. A shared decision's engine was built for this very module: it serves at once."""
    record = hit.record
    eager_ms = record.get("eager_latency_ms")
    source = "shared" if shared else "hit"
    if record.get("decision") == "eager":
        if shared:
            reason = f"{record.get('reason') or 'not tuned'} (as decided for an identical module)"
            logger.info("%s: stays eager, as decided for an identical module of this run", job.name)
        else:
            reason = f"{record.get('reason') or 'not tuned'} (cached decision)"
            logger.info("%s: stays eager, as decided in an earlier run (cache %s)", job.name, hit.key[:12])
        return TuneOutcome(None, [], eager_ms, reason, cache=source)
    index = record.get("backend_index")
    if not isinstance(index, int) or not 0 <= index < len(backends) or \
            backends[index].describe() != record.get("backend"):
        if not shared:
            logger.info("%s: the cache entry %s names a backend that is not among the candidates; tuning again",
                        job.name, hit.key[:12])
        return None
    backend = backends[index]
    start = time.perf_counter()
    engine_dir = hit.engine_dir
    loadable = engine_dir is not None and (backend.kind == "aot" or job.pure)
    obtained = "loaded" if loadable else "rebuilt"
    try:
        if loadable:
            assert engine_dir is not None
            how = "loaded from the cache in"
            check_engine_dir(engine_dir, Limits.of(global_config))
            # The entry's signature verified: its files are what this user's aitune wrote.
            engine = _load(job, backend, engine_dir)
        else:
            how = "built (decision of an identical module) in" if shared else "rebuilt (cached decision) in"
            with _in_process_compile():
                engine = backend.build(job.module, job.signature, job.samples, job.device)
    except _Rebuilt as e:  # a saved torch.compile function that did not load: compiled again, as before
        engine, how, obtained = e.engine, "rebuilt (the saved function did not load) in", "rebuilt"
    except Exception as e:  # an entry this environment cannot load (other versions, a bomb) is tuned again
        logger.info("%s: the cached %s engine could not be %s (%s: %s); tuning again", job.name, backend.describe(),
                    "loaded" if loadable else "rebuilt", type(e).__name__, str(e)[:300])
        if job.strict:
            raise TuningError(f"reusing the cached engine of {job.name} failed: {e}", module_name=job.name,
                              backend=backend.describe()) from e
        return None
    seconds = time.perf_counter() - start
    result = check(job, backend, engine, build_s=seconds, measure=False, what=how)
    if not result.ok:
        logger.info("%s: the %s %s engine does not match eager here (%s); tuning again", job.name,
                    "shared" if shared else "cached", backend.describe(), result.error)
        return None
    assert result.engine is not None
    if shared:
        result.latency_ms = record.get("tuned_latency_ms")
        logger.info("%s: %s, as chosen for an identical module of this run; checked against eager on %d sample(s)",
                    job.name, backend.describe(), len(job.samples))
        return TuneOutcome(result, [result], eager_ms, cache="shared")
    reuse = {"engine": obtained, "seconds": round(seconds, 3)}
    timed = _latency_check(job, result.engine, record)
    if timed is not None:
        reuse.update(timed)
        if not timed["kept"]:
            logger.info("%s: the cached %s engine is slower here than when it was tuned (%.3f ms against %.3f ms "
                        "recorded; eager %.3f ms against %.3f ms; over %d round(s) of the two timed in turns); "
                        "tuning again", job.name, backend.describe(), timed["latency_ms"],
                        timed["recorded_latency_ms"], timed["eager_latency_ms"], timed["recorded_eager_latency_ms"],
                        timed["confirm_rounds"] + 1)
            result.engine.release()
            return None
        result.latency_ms, eager_ms = timed["latency_ms"], timed["eager_latency_ms"]
    else:
        result.latency_ms = record.get("tuned_latency_ms")
    result.engine = on_probation(result.engine, job.module, job.signature, job.confirm_calls, job.tolerances,
                                 name=job.name, origin="from the cache", on_reject=forget)
    logger.info("%s: reusing the %s engine from the cache (%s, %s in %.1f s), checked against eager on %d "
                "sample(s)%s%s", job.name, backend.describe(), hit.key[:12], obtained, seconds, len(job.samples),
                f", {result.latency_ms:.3f} ms as when tuned" if timed is not None else "",
                f"; it is confirmed on the first {job.confirm_calls} live call(s)" if job.confirm_calls else "")
    return TuneOutcome(result, [result], eager_ms, cache="hit", reuse=reuse)


#: ... and by at least this much: below it, the difference is within the timing noise of a single call.
NOISE_MS = 0.05
#: A first verdict of "slower" is confirmed by up to this many rounds of eager and the engine timed in turns.
CONFIRM_ROUNDS = 3


def _latency_check(job: TuneJob, engine: Engine, record: dict[str, Any]) -> dict[str, Any] | None:
    """Time the reused engine here. It is kept unless it is more than `reuse_max_slowdown` (5%, and 0.05 ms)
    slower than recorded both in milliseconds and relative to eager (a machine that is slower today, or an eager
    timing that came out fast, does not re-tune). Timed briefly (at most 10 runs); eager is timed only when the
    engine is slower in milliseconds (else its figure is the recorded one: `eager_timed` False). A first verdict
    of "slower" is confirmed before it counts: eager and the engine are timed in turns for up to `CONFIRM_ROUNDS`
    rounds, and the engine counts as slower only if its best time and its best ratio to the eager time of the
    same round both still are (a busy moment of the machine weighs on both of a round). None when the record has
    no latency to compare with."""
    recorded, recorded_eager = record.get("tuned_latency_ms"), record.get("eager_latency_ms")
    if not isinstance(recorded, (int, float)) or not isinstance(recorded_eager, (int, float)) or recorded <= 0 \
            or recorded_eager <= 0:
        return None
    factor = global_config.reuse_max_slowdown

    def slower_in_ms(now: float) -> bool:
        return now > recorded * factor and now - recorded > NOISE_MS

    def slower(now: float, ratio: float) -> bool:
        return slower_in_ms(now) and ratio > recorded / recorded_eager * factor

    brief = dataclasses.replace(job, warmup=min(job.warmup, 2), iterations=min(job.iterations, 10),
                                max_seconds=min(job.max_seconds, 0.5), _eager_ms=None)
    now = best = brief.time(engine)
    figures: dict[str, Any] = {"recorded_latency_ms": recorded, "recorded_eager_latency_ms": recorded_eager,
                               "recorded_ratio_to_eager": round(recorded / recorded_eager, 4)}
    if not slower_in_ms(best):
        return {"kept": True, "latency_ms": round(now, 4), "eager_latency_ms": recorded_eager, "eager_timed": False,
                "ratio_to_eager": round(now / recorded_eager, 4), "confirm_rounds": 0, **figures}
    eager_now = brief.eager_latency_ms()
    ratio = now / eager_now
    rounds = 0
    module = job.module

    def eager(*args: Any, **kwargs: Any) -> Any:
        return module.forward(*args, **kwargs)

    while rounds < CONFIRM_ROUNDS and slower(best, ratio):
        rounds += 1
        e, t = brief.time(eager), brief.time(engine)
        best = min(best, t)
        if t / e < ratio:
            ratio, now, eager_now = t / e, t, e
    # Reported: the round that came out best against eager (its engine and eager times).
    return {"kept": not slower(best, ratio), "latency_ms": round(now, 4), "eager_latency_ms": round(eager_now, 4),
            "eager_timed": True, "ratio_to_eager": round(ratio, 4), "confirm_rounds": rounds, **figures}


class _Rebuilt(Exception):
    """Loading a saved JIT engine failed and it was built afresh instead (`engine`)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__("rebuilt")
        self.engine = engine


def _load(job: TuneJob, backend: Backend, engine_dir: Path) -> Engine:
    """The saved engine of `engine_dir`; for a JIT backend whose saved function does not load here, the engine
    built afresh (raised as `_Rebuilt`), as reuse did before engines of that kind were saved."""
    try:
        return backend.load(engine_dir, job.module, job.signature, job.samples, job.device, authenticated=True)
    except Exception as e:
        if backend.kind != "jit":
            raise
        logger.info("%s: the saved %s function did not load (%s: %s); compiling it again", job.name,
                    backend.describe(), type(e).__name__, str(e)[:300])
        if job.strict:
            raise
        with _in_process_compile():
            raise _Rebuilt(backend.build(job.module, job.signature, job.samples, job.device)) from None


@contextlib.contextmanager
def _in_process_compile() -> Iterator[None]:
    """No pool of compile workers for a rebuild from the cache: with Inductor's caches warm nothing is compiled,
    yet the pool would still start a dozen subprocesses that import torch, slowing the process's own calls for
    seconds and its exit, which waits for them. A cache miss compiles in-process (compile_threads is not part
    of Inductor's cache key)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(compile_threads=1):
        yield


def decision_record(job: TuneJob, outcome: TuneOutcome, backends: Sequence[Backend]) -> dict[str, Any]:
    """The decision as plain data: tuned with which candidate (by index and description), or eager and why."""
    winner = outcome.winner
    record: dict[str, Any] = {
        "module": job.name, "decision": "tuned" if winner is not None else "eager", "reason": outcome.reason,
        "eager_latency_ms": outcome.eager_latency_ms,
        "candidates": [c.to_report() for c in outcome.candidates],
    }
    if job.purity_record is not None:  # the pure verdict, so that a run reusing this decision need not trace
        record["purity"] = job.purity_record
    if winner is not None:
        backend = winner.backend_obj
        record.update(backend=winner.backend, backend_name=backend.name if backend is not None else None,
                      backend_index=_index_of(backends, backend), tuned_latency_ms=winner.latency_ms,
                      kind=backend.kind if backend is not None else None)
    return record


def _store(store: EngineStore, key: str, fields: dict[str, Any], job: TuneJob, outcome: TuneOutcome,
           backends: Sequence[Backend]) -> None:
    if not outcome.candidates:
        return  # nothing was tried (no backend): nothing worth remembering
    if outcome.winner is None and CALLERS.several():
        # Several threads were calling modules: a failure may have come from them, not from the module.
        logger.info("%s: not storing the eager decision (several threads call modules)", job.name)
        return
    winner = outcome.winner
    record = decision_record(job, outcome, backends)
    record.update(module_class=fields["module_class"], key_fields=fields)
    save: Callable[[Path], None] | None = None
    if winner is not None:
        backend = winner.backend_obj
        engine = winner.engine
        if backend is not None and backend.kind == "aot" and engine is not None:
            save = engine.save
        elif backend is not None and engine is not None and job.pure and hasattr(engine, "artifact"):
            save = _jit_artifact(job, engine)
    try:
        try:
            published = store.publish(key, record, save)
        except NotImplementedError:
            published = store.publish(key, record, None)
    except CacheError as e:
        logger.warning("%s", e)
        return
    except Exception as e:  # an engine that cannot be saved costs the next run a tuning, not this call
        logger.warning("aitune cache: storing the decision for %s failed (%s: %s)", job.name, type(e).__name__,
                       str(e)[:300])
        return
    outcome.cache = "stored" if published else "stored by another process"
    logger.info("%s: decision %s (%s)", job.name, "stored in the cache" if published else
                "already stored in the cache by another process", key[:12])


def _jit_artifact(job: TuneJob, engine: Engine) -> Callable[[Path], None] | None:
    """The writer of a JIT engine's saved function (serialized now), or None when it cannot be saved: the entry
    is then stored without it and a later run compiles the engine again."""
    start = time.perf_counter()
    try:
        write: Callable[[Path], None] = engine.artifact()  # type: ignore[attr-defined]
    except NotImplementedError as e:
        logger.debug("%s: %s", job.name, e)
        return None
    except Exception as e:  # a forward the whole-graph compile refuses: the next run compiles it again
        logger.info("%s: its torch.compile engine cannot be saved (%s: %s); a later run compiles it again",
                    job.name, type(e).__name__, str(e)[:300])
        return None
    logger.info("%s: its torch.compile engine is saved with the decision (serialized in %.1f s)", job.name,
                time.perf_counter() - start)
    return write


def _index_of(backends: Sequence[Backend], backend: Backend | None) -> int | None:
    for i, b in enumerate(backends):
        if b is backend:
            return i
    return None

