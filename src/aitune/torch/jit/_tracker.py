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
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from aitune.torch._samples import SignatureRecord, SignatureTable
from aitune.torch._signature._record import release_samples
from aitune.torch._signature._route import drop_engine
from aitune.torch._signature._weights import Baseline

logger = logging.getLogger(__name__)

#: The states of a tracked module (see the module docstring).
ModuleStatus = Literal["pending", "active", "eager", "failed", "skipped", "detached", "untracked"]
#: What the report says of a module: an active module is "recording" or "tuned" (or "eager" once every
#: signature stayed eager); the others as their status.
ReportState = Literal["recording", "tuned", "eager", "failed", "skipped", "detached", "untracked", "pending"]
PASSTHROUGH_STATES: frozenset[ModuleStatus] = frozenset({"pending", "eager", "failed", "skipped", "detached",
                                                         "untracked"})


#: In-place weight changes under weight-copying engines after which only live-weight backends are tried.
LIVE_WEIGHTS_AFTER = 2


class ModuleState:
    """What aitune knows about one module instance. Mutated only under `LOCK`."""

    __slots__ = (
        "ref", "key", "status", "passthrough", "name", "qualname", "depth", "parent", "children", "root",
        "table", "reason", "decided", "paths", "by_path", "param_ids",
        "version_sum", "weights_baseline", "weight_tensors", "data_accesses",
        "epoch", "tune_seconds", "baked_invalidations", "hook_epoch", "library_hooks", "told", "repeats",
        "__weakref__",
    )

    def __init__(self, module: torch.nn.Module, status: ModuleStatus, name: str, qualname: str, depth: int,
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
        #: Its input signatures, once it is active.
        self.table: SignatureTable | None = None
        self.reason: str | None = None
        #: True once the first tuning of this module decided tuned or not (drives the top-down walk).
        self.decided = False
        #: For top modules: id(submodule) -> attribute path, and path -> tracked state.
        self.paths: dict[int, str] | None = None
        self.by_path: dict[str, ModuleState] = {}
        #: Fingerprint of the weights the engines were built against (see `fingerprint`).
        self.param_ids: tuple[Any, ...] | None = None
        self.version_sum = 0
        #: The sampled weights its weight-copying engines were built from (`_signature._weights.Baseline`):
        #: writes through `Parameter.data` bump no version counter.
        self.weights_baseline: Baseline | None = None
        #: The weight tensors `param_ids` describes and the `Parameter.data` access count when they were last
        #: compared: while neither the epoch nor that count moved, summing their version counters is the whole
        #: per-call check (no walk of the module tree).
        self.weight_tensors: list[torch.Tensor] | None = None
        self.data_accesses = -1
        self.epoch = -1
        self.tune_seconds = 0.0
        #: How often the weights changed in place under an engine holding a copy of them. From the second time
        #: on (training between evaluations, not a one-off reload) only backends that read the live weights are
        #: tried, so the module is not rebuilt after every step.
        self.baked_invalidations = 0
        #: `_signature._hooks.HOOKS` when hooks below this module were last checked.
        self.hook_epoch = -1
        #: Below it are hooks that do nothing unless a library turns them on for a call (`_hooks.inert_hook`):
        #: while it does (`_hooks.library_collecting`), the module's calls run eagerly.
        self.library_hooks = False
        #: Conditions already logged for this module (one INFO line each: training mode, hooks...).
        self.told: set[str] = set()
        #: Conditions that recur (weights changed under an engine or samples): how often, for the summary.
        self.repeats: dict[str, int] = {}

    @property
    def signatures(self) -> dict[Any, SignatureRecord]:
        return self.table.records if self.table is not None else {}

    @property
    def calls(self) -> int:
        """Calls aitune handled while the module was active (recorded, routed, or run eagerly while tracked)."""
        return self.table.calls if self.table is not None else 0

    def set_status(self, status: ModuleStatus, reason: str | None = None, *, walk_children: bool = False) -> None:
        """`walk_children`: pass through only after one call on the call stack, so that the children of a
        module decided at discovery (skipped, too small) are discovered under it."""
        self.status = status
        self.passthrough = status in PASSTHROUGH_STATES and not walk_children
        if reason is not None:
            self.reason = reason

    @property
    def live_weights_only(self) -> bool:
        return self.baked_invalidations >= LIVE_WEIGHTS_AFTER

    def report_state(self) -> ReportState:
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


class Epoch:
    """Bumped whenever module weights may have been replaced or moved (load_state_dict, .to(), assignment...), so
    that tracked modules re-check their weights on their next call."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


EPOCH = Epoch()
_ROOT_NAMES: dict[str, int] = {}
_EXCLUDED_CLASSES: dict[tuple[type, tuple[str, ...], tuple[str, ...]], bool] = {}
_local = threading.local()


def _forget(st: ModuleState) -> Any:
    state_ref = weakref.ref(st)

    # Everything the callback uses is bound now: at interpreter exit module globals may already be None.
    def callback(_: object, _states: dict[int, ModuleState] = STATES, _drop: Any = drop_engine,
                 _release: Any = release_samples) -> None:
        state = state_ref()
        if state is None:
            return
        try:
            if _states.get(state.key) is state:
                del _states[state.key]
            for sig in state.signatures.values():
                _drop(sig)
                _release(sig)
        except Exception:  # at interpreter exit the helpers' own globals may be gone; nothing to free
            pass
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
                drop_engine(sig)
                release_samples(sig)
        STATES.clear()
        ORDER.clear()
        _ROOT_NAMES.clear()
        _EXCLUDED_CLASSES.clear()
        EPOCH.value = 0


def tracked_states(*, alive_only: bool = False) -> list[ModuleState]:
    """Tracked states in discovery order; with `alive_only`, only those whose module still exists."""
    with LOCK:
        return [s for s in ORDER if not alive_only or s.ref() is not None]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_excluded(cls: type, prefixes: list[str], names: Sequence[str] = ()) -> bool:
    """Module-path prefixes (`exclude_packages`, matched as text), and package or qualified class names
    (`patch_exclude`: `diffusers` covers `diffusers.models.Net`, not `diffusers_extra`)."""
    key = (cls, tuple(prefixes), tuple(names))
    hit = _EXCLUDED_CLASSES.get(key)
    if hit is None:
        qual = _qualname(cls)
        hit = any(qual.startswith(p) for p in prefixes) or any(
            qual == n or qual.startswith(n.rstrip(".") + ".") for n in names)
        _EXCLUDED_CLASSES[key] = hit
    return hit


def _module_path(root: ModuleState, module: torch.nn.Module) -> str | None:
    if root.paths is None or id(module) not in root.paths:
        root_module = root.ref()
        if root_module is None:
            return None
        root.paths = {id(m): p for p, m in root_module.named_modules(remove_duplicate=False)}
    return root.paths.get(id(module))


def in_data_loader_worker() -> bool:
    """Is this process a DataLoader worker (forked or spawned)? Modules called there (a dataset's transforms) are
    not tracked: the worker lives for one epoch, and tuning there would cost each worker a compile for nothing."""
    worker = sys.modules.get("torch.utils.data._utils.worker")
    return worker is not None and getattr(worker, "_worker_info", None) is not None


def discover(module: torch.nn.Module, settings: Any) -> ModuleState:
    """Create the state of a module seen for the first time (caller holds no lock; we take it)."""
    cls = type(module)
    with LOCK:
        existing = STATES.get(id(module))
        if existing is not None and existing.ref() is module:
            return existing
        if _is_excluded(cls, settings.exclude_packages, settings.patch_exclude) or in_data_loader_worker():
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
    st.table = SignatureTable(module.forward)
    logger.info("%s: recording (%s, %s parameters)", st.name, st.qualname, f"{n_params:,}")


def _activate_children(st: ModuleState, settings: Any) -> None:
    for child in st.children:
        if child.status == "pending" and child.depth <= settings.max_depth_level:
            _consider(child, child.ref(), settings)


def give_up(st: ModuleState, status: ModuleStatus, reason: str, settings: Any) -> None:
    """The module stays eager: try its children (caller holds LOCK)."""
    for sig in st.signatures.values():
        drop_engine(sig)
        release_samples(sig)
    st.set_status(status, reason)
    st.decided = True
    _activate_children(st, settings)


def reopen_descendants(st: ModuleState) -> None:
    """The engine of `st` no longer covers its descendants (it was dropped): they are discovered again under it
    (caller holds LOCK; `give_up` then activates the children)."""
    for d in st.descendants():
        if d.status == "detached":
            d.set_status("pending")
            d.reason = None


def detach_descendants(st: ModuleState) -> None:
    """An ancestor's engine now covers these modules (caller holds LOCK)."""
    for d in st.descendants():
        if d.status != "untracked":
            for sig in d.signatures.values():
                drop_engine(sig)
                release_samples(sig)
            d.set_status("detached", f"inside the engine of {st.name}")
