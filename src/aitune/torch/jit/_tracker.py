"""Per-module state: discovery, naming, the call hierarchy and the top-down state machine.

A module is discovered on its first call. Its parent is the nearest tracked module that is running on this
thread; within one top module, names and the parent-child relation follow the module tree
(`BertModel.encoder.layer.0`). States:

    pending  -> an ancestor is still being recorded or tuned; calls pass straight through
    active   -> its signatures are recorded, tuned and routed (report: recording / tuned)
    eager    -> nothing beat eager (or it is too small): its children are tried, down to max_depth_level
    failed   -> every candidate failed: like eager
    skipped  -> excluded by the skip list: like eager
    detached -> an ancestor was tuned; its calls happen inside that ancestor's engine

The table is keyed by id() with a weakref callback that removes the entry when the module is collected, so the
hot path is one dict lookup and the user's modules carry no attributes of ours.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from aitune.torch._samples import InputNormalizer, SignatureRecord

logger = logging.getLogger(__name__)

PASSTHROUGH_STATES = frozenset({"pending", "eager", "failed", "skipped", "detached", "untracked"})


#: In-place weight changes under weight-copying engines after which only live-weight backends are tried.
LIVE_WEIGHTS_AFTER = 2


class ModuleState:
    """What aitune knows about one module instance. Mutated only under `LOCK`."""

    __slots__ = (
        "ref", "key", "status", "passthrough", "name", "qualname", "depth", "parent", "children", "root",
        "normalizer", "signatures", "reason", "calls", "decided", "paths", "by_path", "param_ids",
        "version_sum", "epoch", "tune_seconds", "baked_invalidations", "__weakref__",
    )

    def __init__(self, module: torch.nn.Module, status: str, name: str, qualname: str, depth: int,
                 parent: ModuleState | None) -> None:
        self.ref: weakref.ref[torch.nn.Module] = weakref.ref(module, _forget(self))
        self.key = id(module)
        self.status = status
        self.passthrough = status in PASSTHROUGH_STATES
        self.name = name
        self.qualname = qualname
        self.depth = depth
        self.parent = parent
        self.children: list[ModuleState] = []
        self.root: ModuleState = parent.root if parent is not None else self
        self.normalizer: InputNormalizer | None = None
        self.signatures: dict[Any, SignatureRecord] = {}
        self.reason: str | None = None
        self.calls = 0
        #: True once the first tuning of this module decided tuned or not (drives the top-down walk).
        self.decided = False
        #: For top modules: id(submodule) -> attribute path, and path -> tracked state.
        self.paths: dict[int, str] | None = None
        self.by_path: dict[str, ModuleState] = {}
        #: Fingerprint of the weights the engines were built against (see `fingerprint`).
        self.param_ids: tuple[Any, ...] | None = None
        self.version_sum = 0
        self.epoch = -1
        self.tune_seconds = 0.0
        #: How often the weights changed in place under an engine holding a copy of them. From the second time
        #: on (training between evaluations, not a one-off reload) only backends that read the live weights are
        #: tried, so the module is not rebuilt after every step.
        self.baked_invalidations = 0

    def set_status(self, status: str, reason: str | None = None, *, walk_children: bool = False) -> None:
        """`walk_children`: pass through only after one call on the call stack, so that the children of a
        module decided at discovery (skipped, too small) are discovered under it."""
        self.status = status
        self.passthrough = status in PASSTHROUGH_STATES and not walk_children
        if reason is not None:
            self.reason = reason

    @property
    def live_weights_only(self) -> bool:
        return self.baked_invalidations >= LIVE_WEIGHTS_AFTER

    def report_state(self) -> str:
        if self.status != "active":
            return self.status
        statuses = {s.status for s in self.signatures.values()}
        if "tuned" in statuses:
            return "tuned"
        if statuses == {"eager"}:
            return "eager"
        return "recording"

    def tuned_signature(self) -> SignatureRecord | None:
        tuned = [s for s in self.signatures.values() if s.status == "tuned"]
        return max(tuned, key=lambda s: s.calls) if tuned else None

    def descendants(self) -> Iterator[ModuleState]:
        for child in self.children:
            yield child
            yield from child.descendants()

    def ancestors(self) -> Iterator[ModuleState]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


#: id(module) -> state. Read without the lock on the hot path (dict reads are atomic in CPython).
STATES: dict[int, ModuleState] = {}
#: Every tracked state in discovery order, kept after its module is collected so the report still tells what
#: happened to it (a collected module's engines and samples are released).
ORDER: list[ModuleState] = []
LOCK = threading.RLock()
#: Bytes held by recorded samples, process-wide (bounded by max_samples_bytes).
SAMPLE_BYTES = [0]
_ROOT_NAMES: dict[str, int] = {}
_EXCLUDED_CLASSES: dict[type, bool] = {}
_local = threading.local()


def _forget(st: ModuleState) -> Any:
    state_ref = weakref.ref(st)

    # Bind the table now: at interpreter shutdown module globals may already be cleared.
    def callback(_: object, _states: dict[int, ModuleState] = STATES) -> None:
        state = state_ref()
        if state is None:
            return
        if _states.get(state.key) is state:
            del _states[state.key]
        for sig in state.signatures.values():
            drop_engine(sig)
            release_samples(sig)
    return callback


def call_stack() -> list[ModuleState]:
    """Tracked modules running on this thread, outermost first."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def reset() -> None:
    """Forget every module (used by disable and by tests)."""
    with LOCK:
        for st in list(STATES.values()):
            for sig in st.signatures.values():
                if sig.engine is not None:
                    sig.engine.release()
        STATES.clear()
        ORDER.clear()
        SAMPLE_BYTES[0] = 0
        _ROOT_NAMES.clear()
        _EXCLUDED_CLASSES.clear()


def tracked_states(*, alive_only: bool = False) -> list[ModuleState]:
    """Tracked states in discovery order; with `alive_only`, only those whose module still exists."""
    with LOCK:
        return [s for s in ORDER if not alive_only or s.ref() is not None]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_excluded(cls: type, prefixes: list[str]) -> bool:
    hit = _EXCLUDED_CLASSES.get(cls)
    if hit is None:
        qual = _qualname(cls)
        hit = any(qual.startswith(p) for p in prefixes)
        _EXCLUDED_CLASSES[cls] = hit
    return hit


def _module_path(root: ModuleState, module: torch.nn.Module) -> str | None:
    if root.paths is None or id(module) not in root.paths:
        root_module = root.ref()
        if root_module is None:
            return None
        root.paths = {id(m): p for p, m in root_module.named_modules(remove_duplicate=False)}
    return root.paths.get(id(module))


def discover(module: torch.nn.Module, settings: Any) -> ModuleState:
    """Create the state of a module seen for the first time (caller holds no lock; we take it)."""
    cls = type(module)
    with LOCK:
        existing = STATES.get(id(module))
        if existing is not None and existing.ref() is module:
            return existing
        if _is_excluded(cls, settings.exclude_packages):
            st = ModuleState(module, "untracked", cls.__name__, _qualname(cls), 0, None)
            STATES[id(module)] = st
            return st
        stack = call_stack()
        caller = stack[-1] if stack else None
        if caller is None:
            st = _new_root(module, cls)
        else:
            st = _new_child(module, cls, caller)
        STATES[id(module)] = st
        ORDER.append(st)
        _initial_status(st, module, settings)
        logger.debug("discovered %s (%s) as %s", st.name, st.qualname, st.status)
        return st


def _new_root(module: torch.nn.Module, cls: type) -> ModuleState:
    base = cls.__name__
    n = _ROOT_NAMES.get(base, 0) + 1
    _ROOT_NAMES[base] = n
    name = base if n == 1 else f"{base}#{n}"
    st = ModuleState(module, "pending", name, _qualname(cls), 0, None)
    st.by_path[""] = st
    return st


def _new_child(module: torch.nn.Module, cls: type, caller: ModuleState) -> ModuleState:
    root = caller.root
    path = _module_path(root, module)
    if path is not None and path:
        parent = root
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            found = root.by_path.get(".".join(parts[:i]))
            if found is not None:
                parent = found
                break
        name = f"{root.name}.{path}"
    else:
        # Called from within the top module but not one of its submodules (a shared or global module).
        parent = caller
        path = None
        name = f"{caller.name}.<{cls.__name__}>"
    st = ModuleState(module, "pending", name, _qualname(cls), parent.depth + 1, parent)
    if path is not None:
        root.by_path[path] = st
    parent.children.append(st)
    return st


def _initial_status(st: ModuleState, module: torch.nn.Module, settings: Any) -> None:
    parent = st.parent
    if parent is None:
        _consider(st, module, settings)
    elif parent.status in ("eager", "failed", "skipped"):
        if st.depth <= settings.max_depth_level:
            _consider(st, module, settings)
    elif parent.status == "detached" or parent.report_state() == "tuned":
        st.set_status("detached")
    elif parent.status == "active" and settings.record_nested and st.depth <= settings.max_depth_level:
        _consider(st, module, settings)


def _consider(st: ModuleState, module: torch.nn.Module | None, settings: Any) -> None:
    """Make a module a tuning candidate, or give it up for its children (caller holds LOCK)."""
    if module is None:
        return
    cls = type(module)
    if cls.__name__ in settings.skip_modules or st.qualname in settings.skip_modules:
        st.set_status("skipped", "in skip_modules", walk_children=not st.children)
        st.decided = True
        logger.info("%s: skipped (in skip_modules)", st.name)
        _activate_children(st, settings)
        return
    n_params = sum(p.numel() for p in module.parameters())
    if n_params < settings.min_parameters:
        st.set_status("eager", f"{n_params} parameters, fewer than min_parameters={settings.min_parameters}",
                      walk_children=not st.children)
        st.decided = True
        _activate_children(st, settings)
        return
    st.set_status("active")
    st.normalizer = InputNormalizer(module.forward)
    logger.info("%s: recording (%s, %s parameters)", st.name, st.qualname, f"{n_params:,}")


def _activate_children(st: ModuleState, settings: Any) -> None:
    for child in st.children:
        if child.status == "pending" and child.depth <= settings.max_depth_level:
            _consider(child, child.ref(), settings)


def give_up(st: ModuleState, status: str, reason: str, settings: Any) -> None:
    """The module stays eager: try its children (caller holds LOCK)."""
    for sig in st.signatures.values():
        drop_engine(sig)
        release_samples(sig)
    st.set_status(status, reason)
    st.decided = True
    _activate_children(st, settings)


def detach_descendants(st: ModuleState) -> None:
    """An ancestor's engine now covers these modules (caller holds LOCK)."""
    for d in st.descendants():
        if d.status != "untracked":
            for sig in d.signatures.values():
                drop_engine(sig)
                release_samples(sig)
            d.set_status("detached", f"inside the engine of {st.name}")


def release_samples(sig: SignatureRecord) -> None:
    with sig.lock:
        SAMPLE_BYTES[0] -= sum(s.nbytes for s in sig.samples)
        sig.samples.clear()


def drop_engine(sig: SignatureRecord) -> None:
    if sig.engine is not None:
        sig.engine.release()
        sig.engine = None


def fingerprint(module: torch.nn.Module) -> tuple[tuple[Any, ...], int]:
    """(identity, storage, dtype, device and shape of every parameter and buffer), and the sum of their
    version counters. Versions only grow, so a changed sum means some tensor was modified in place."""
    ids: list[Any] = []
    versions = 0
    for t in _weights(module):
        ids.append((id(t), t.data_ptr(), t.dtype, t.device, tuple(t.shape)))
        versions += t._version
    return tuple(ids), versions


def version_sum(module: torch.nn.Module) -> int:
    return sum(t._version for t in _weights(module))


def _weights(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    for b in module.buffers():
        if b is not None:
            yield b
