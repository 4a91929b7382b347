"""Is a call a pure function of its tensors and the module's weights? Asked before engines that run no Python.

An engine that runs no Python (ONNX Runtime, AOTInductor, TensorRT: backends of kind "aot") replays the tensor
computation it captured, with every Python value it read at that moment baked in and every Python side effect
gone. So before such a backend is tried, `probe` traces the module's forward once with Dynamo, on a copy of one
sample, capturing graphs only (nothing is compiled), and reads what Dynamo found:

- its guards: the Python values the traced code depends on. A value of a global variable of the user's own code
  (the script, its modules) makes the call impure: the script may change it. Globals of installed packages and of
  the standard library (transformers' flags, `math.pi`) are taken as constants. Values reached from the module
  (plain attributes of it and its submodules, of objects they hold such as a config) are allowed, and watched
  (`Watch`): when one changes, the engine is dropped like after a weight change (`_route.choose`).
- its side effects: a forward that changes a Python object (appends to a list it was given or holds, sets an
  attribute of an object, writes a global of the user's code) is impure. Changes to package-owned state (a
  library's own bookkeeping) are not counted.
- a forward Dynamo cannot trace is not shown pure.

An impure call is served by engines that run its Python (Inductor JIT, whose guards and side-effect replay keep
its meaning) or eagerly, and the report says why. Verdicts are kept per module class, structure and signature
for the process, so identical modules (a model built in a loop) are traced once.

A pure verdict travels with the decision in the persistent cache (`persisted`, `from_record`), so a later run
that reuses the decision does not trace again: it holds the watched values (by `repr`) and, for every function of
the user's own code that Dynamo traced (not installed packages or the standard library, whose versions are part
of the cache key), its module, lines and a sha256 of its source. It is taken again only when each of those
sources is unchanged and each watched value reads the same on this run's module; else the call is traced as
always.

Known limits: Python run outside what Dynamo traces (code it skips, C extensions) is not seen; a guard Dynamo
names in a form not parsed here (`_steps`) on the module's side makes the call impure rather than unwatched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import os
import re
import sys
import sysconfig
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from aitune.torch import _tree
from aitune.torch._samples import Sample

logger = logging.getLogger(__name__)

#: Guard kinds that compare a Python value (as opposed to a type, an identity of code, or tensor metadata).
_VALUE_GUARDS = frozenset({"CONSTANT_MATCH", "EQUALS_MATCH", "SEQUENCE_LENGTH", "DICT_KEYS_MATCH", "DICT_CONTAINS",
                           "DICT_VERSION", "TUPLE_ITERATOR_LEN", "LIST_LENGTH", "TUPLE_LENGTH", "DICT_LENGTH",
                           "SET_CONTAINS", "TENSOR_MATCH"})
#: nn.Module bookkeeping, reached through the module: its structure, not the user's values.
_INTERNAL_STEPS = frozenset({"_modules", "_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks",
                             "_backward_hooks", "_backward_pre_hooks", "_forward_hooks_with_kwargs",
                             "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called", "_state_dict_hooks",
                             "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                             "_non_persistent_buffers_set", "__class__", "__dict__"})
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\['((?:[^'\\]|\\.)*)'\]|\[(\d+)\]")
_IMPORT = re.compile(r"G\['__import_(\w+?)'\]")
#: The name the traced entry gives the module (`backend._inductor.entry_point`).
_ROOT = "mod"
_SIDE_EFFECTS = re.compile(r"side effects happened in the model\.forward.*?:\s*(\[.*\])", re.S)

Step = tuple[str, Any]  # ("attr", name) | ("item", key)


@dataclass(frozen=True)
class Watched:
    """One Python value the engine baked in, reached from the module by `steps`: compared by `kind`."""

    steps: tuple[Step, ...]
    kind: str  # "value" (==), "len", "keys", "tensor" (identity and version)
    expected: Any

    def describe(self) -> str:
        return "".join(f".{k}" if how == "attr" else f"[{k!r}]" for how, k in self.steps).lstrip(".")


class Watch:
    """The values an engine of a signature baked in; `changed(module)` names the first that no longer holds.

    Checked before every call such an engine serves, so it is laid out for that: each distinct owner (the module,
    a submodule, a config object) is reached by one step from an earlier one, then each value is read from its
    owner and compared."""

    def __init__(self, items: Sequence[Watched]) -> None:
        self.items = tuple(items)
        index: dict[tuple[Step, ...], int] = {(): 0}
        self._owners: list[tuple[int, bool, Any]] = []  # (parent's index, by attribute?, name or key)
        self._checks: list[tuple[int, bool, Any, str, Any, Watched]] = []

        def owner(steps: tuple[Step, ...]) -> int:
            if steps not in index:
                parent = owner(steps[:-1])
                how, key = steps[-1]
                self._owners.append((parent, how == "attr", key))
                index[steps] = len(self._owners)
            return index[steps]

        for item in self.items:
            how, key = item.steps[-1]
            self._checks.append((owner(item.steps[:-1]), how == "attr", key, item.kind, item.expected, item))

    def __bool__(self) -> bool:
        return bool(self.items)

    def changed(self, module: torch.nn.Module) -> str | None:
        objs: list[Any] = [module]
        try:
            for parent, by_attr, key in self._owners:
                obj = objs[parent]
                objs.append(getattr(obj, key) if by_attr else obj[key])
        except Exception:  # an owner is gone (a submodule replaced by something else): a change too
            return "an attribute it read is gone"
        for at, by_attr, key, kind, expected, item in self._checks:
            obj = objs[at]
            try:
                now = getattr(obj, key) if by_attr else obj[key]
            except Exception:
                return f"{item.describe()} is gone"
            if kind == "value":
                if now is expected or (type(now) is type(expected) and now == expected):
                    continue
            else:
                now = _measure(now, kind)
                if now == expected:
                    continue
            return f"{item.describe()} changed ({_short(expected)} -> {_short(now)})"
        return None

    def rebound(self, module: torch.nn.Module) -> Watch | None:
        """The same paths with this module's current values (an identical module reusing a verdict); None when one
        cannot be read."""
        owners: dict[tuple[Step, ...], Any] = {(): module}
        items = []
        for item in self.items:
            try:
                items.append(Watched(item.steps, item.kind,
                                     _read(_resolve(owners, item.steps[:-1]), item.steps[-1], item.kind)))
            except Exception:
                return None
        return Watch(items)


@dataclass(frozen=True)
class Purity:
    """`impure`: why the call is not a pure function of its tensors (None: it is); `watch`: the module-side values
    an engine would bake in; `outside`: why no engine may serve it at all (its forward changes Python objects
    other than its arguments, which aitune's own runs of it would change too)."""

    impure: str | None
    watch: Watch
    outside: str | None = None
    #: Why Dynamo broke the forward into several graphs (its graph-break reasons), if it did.
    breaks: tuple[str, ...] = ()
    #: The user's own code Dynamo traced: (module, first line, last line, sha256 of those lines); None when it
    #: could not be read (the verdict is then not persisted).
    sources: tuple[tuple[str, int, int, str], ...] | None = None


class _Verdicts:
    """Verdicts of this process by (module class, structure, signature)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[Any, Purity] = {}

    def get(self, key: Any) -> Purity | None:
        with self._lock:
            return self._by_key.get(key)

    def put(self, key: Any, purity: Purity) -> None:
        with self._lock:
            self._by_key[key] = purity

    def reset(self) -> None:
        with self._lock:
            self._by_key.clear()


VERDICTS = _Verdicts()


def reset() -> None:
    VERDICTS.reset()


def probe(module: torch.nn.Module, key: Any, sample: Sample) -> Purity:
    """The verdict for calls of `module` like `sample` (under the caller's grad and autocast modes)."""
    from aitune.torch import _fingerprint

    try:
        memo: Any = (type(module), _fingerprint.structure_digest(module), repr(key))
    except Exception:  # a module the structure digest cannot describe is probed each time
        memo = None
    known = VERDICTS.get(memo) if memo is not None else None
    if known is not None:
        if known.impure is not None:
            return known
        watch = known.watch.rebound(module)
        if watch is not None:
            return dataclasses.replace(known, watch=watch)
    verdict = _trace(module, sample)
    if memo is not None:
        VERDICTS.put(memo, verdict)
    return verdict


def _trace(module: torch.nn.Module, sample: Sample) -> Purity:
    from aitune.torch.backend._inductor import entry_point

    guards: list[Any] = []

    def keep_all(entries: Sequence[Any]) -> list[bool]:
        guards.extend(entries)
        return [True] * len(entries)

    graphs: list[int] = []
    traced: list[Any] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        graphs.append(len(gm.graph.nodes))
        context = torch._guards.TracingContext.try_get()
        traced.extend(getattr(context, "traced_code", None) or [None])  # None: not known
        return gm.forward

    args, kwargs = _tree.clone((sample.args, sample.kwargs))
    # Side effects are reported, not replayed: the trace runs on the live module and must leave the script's
    # objects as they were.
    patch: dict[str, Any] = {k: v for k, v in (("side_effect_replay_policy", "warn"), ("replay_side_effects", False))
             if hasattr(torch._dynamo.config, k)}
    from torch._dynamo.utils import counters

    breaks_before = dict(counters["graph_break"])
    try:
        with warnings.catch_warnings(record=True) as caught, torch._dynamo.config.patch(patch):
            warnings.simplefilter("always")
            torch._dynamo.optimize(capture, guard_filter_fn=keep_all)(entry_point(module))(module, *args, **kwargs)
    except Exception as e:  # what Dynamo cannot trace is not shown pure
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return Purity(f"its forward could not be analysed ({type(e).__name__}: {message[:200]})", Watch(()))
    for w in caught:
        found = _SIDE_EFFECTS.search(str(w.message))
        if found is None:
            continue
        user = [_readable(s) for s in _sources(found.group(1)) if not _library_owned(s)]
        outside = [s for s in user if not s.startswith(("args", "kwargs"))]
        if outside:
            return Purity(f"its forward changes Python objects ({', '.join(outside[:3])})", Watch(()),
                          outside=f"its forward changes Python objects other than its arguments "
                                  f"({', '.join(outside[:3])}), which aitune's own runs of it would change too")
        if user:
            return Purity(f"its forward changes Python objects it is given ({', '.join(user[:3])}), which an engine "
                          "running no Python would not do", Watch(()))
    broke = tuple(reason for reason, n in counters["graph_break"].items() if n > breaks_before.get(reason, 0))
    if len(graphs) > 1 and not broke:
        broke = (f"{len(graphs)} graphs",)
    verdict = _judge(module, guards)
    return dataclasses.replace(verdict, breaks=tuple(str(b).splitlines()[0][:200] for b in broke),
                               sources=_user_sources(traced))


def _user_sources(codes: Sequence[Any]) -> tuple[tuple[str, int, int, str], ...] | None:
    """(module, first line, last line, sha256) of each traced code object of the user's own code; None when one
    is not known or its source cannot be read."""
    found: set[tuple[str, int, int, str]] = set()
    for code in codes:
        if code is None:
            return None
        module = inspect.getmodule(code)
        if module is None:
            return None
        if _installed(module):
            continue
        try:
            lines, first = inspect.getsourcelines(code)
        except (OSError, TypeError):
            return None
        found.add((module.__name__, first, first + len(lines), _sha256("".join(lines))))
    return tuple(sorted(found))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def persisted(verdict: Purity) -> dict[str, Any] | None:
    """The record of a pure, whole-graph verdict for the persistent cache, or None when it cannot be persisted
    (impure, broken into graphs, sources unknown, a watched tensor or a value without a faithful repr)."""
    if verdict.impure is not None or verdict.outside is not None or verdict.breaks or verdict.sources is None:
        return None
    watch = []
    for item in verdict.watch.items:
        if item.kind not in ("value", "len", "keys"):
            return None
        watch.append({"steps": [list(step) for step in item.steps], "kind": item.kind, "repr": repr(item.expected)})
    return {"sources": [list(src) for src in verdict.sources], "watch": watch}


def from_record(record: Any, module: torch.nn.Module) -> Purity | None:
    """The verdict `persisted` recorded, for `module` now: None unless every recorded source is unchanged and
    every watched value reads the same (then the caller traces as usual)."""
    try:
        sources = [(str(m), int(first), int(last), str(sha)) for m, first, last, sha in record["sources"]]
        items = [Watched(tuple((str(how), key) for how, key in w["steps"]), str(w["kind"]), None)
                 for w in record["watch"]]
        expected = [str(w["repr"]) for w in record["watch"]]
    except (KeyError, TypeError, ValueError):
        return None
    for name, first, last, sha in sources:
        source_module = sys.modules.get(name)
        if source_module is None:
            return None
        try:
            lines = inspect.getsourcelines(source_module)[0][first - 1:last - 1]
        except (OSError, TypeError):
            return None
        if _sha256("".join(lines)) != sha:
            return None
    watch = Watch(items).rebound(module)
    if watch is None or [repr(item.expected) for item in watch.items] != expected:
        return None
    return Purity(None, watch, sources=tuple(sources))


def _judge(module: torch.nn.Module, guards: Sequence[Any]) -> Purity:
    owned = {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}
    items: dict[str, Watched] = {}
    for g in guards:
        kind = getattr(g, "guard_type", None)
        name = getattr(g, "name", "") or ""
        if kind not in _VALUE_GUARDS or not name:
            continue
        if getattr(g, "is_global", False) or name.startswith("G["):
            if not _library_owned(name):
                return Purity(f"it reads {_global_name(name)}, a global of the script's code, which an engine "
                              "running no Python would keep at its value when tuned", Watch(()))
            continue
        if not (name == _ROOT or name.startswith((_ROOT + ".", _ROOT + "["))):
            continue  # the call's own arguments (part of its signature) or class-level code
        steps = _steps(name[len(_ROOT):])
        if steps is None:
            return Purity(f"it depends on {name}, which aitune cannot watch for changes", Watch(()))
        if not steps or any(how == "attr" and k in _INTERNAL_STEPS for how, k in steps[-1:]):
            continue
        watched_kind = {"SEQUENCE_LENGTH": "len", "TUPLE_ITERATOR_LEN": "len", "LIST_LENGTH": "len",
                        "TUPLE_LENGTH": "len", "DICT_LENGTH": "len", "DICT_KEYS_MATCH": "keys",
                        "DICT_CONTAINS": "keys", "SET_CONTAINS": "keys", "DICT_VERSION": "keys",
                        "TENSOR_MATCH": "tensor"}.get(kind, "value")
        try:
            value = _read(_resolve({(): module}, steps[:-1]), steps[-1], watched_kind)
            target = _resolve({(): module}, steps)
        except Exception:
            return Purity(f"it depends on {name}, which aitune cannot read back", Watch(()))
        if watched_kind == "tensor" and id(target) in owned:
            continue  # a parameter or buffer: the weights check covers it
        if watched_kind == "value" and not _plain(value):
            continue  # an object compared by identity elsewhere; its own values have guards of their own
        items.setdefault(f"{name}|{watched_kind}", Watched(steps, watched_kind, value))
    return Purity(None, Watch(list(items.values())))


def _steps(rest: str) -> tuple[Step, ...] | None:
    steps: list[Step] = []
    pos = 0
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if m is None:
            return None
        if m.group(1) is not None:
            steps.append(("attr", m.group(1)))
        elif m.group(2) is not None:
            steps.append(("item", m.group(2).encode().decode("unicode_escape")))
        else:
            steps.append(("item", int(m.group(3))))
        pos = m.end()
    return tuple(steps)


def _resolve(owners: dict[tuple[Step, ...], Any], steps: tuple[Step, ...]) -> Any:
    if steps in owners:
        return owners[steps]
    parent = _resolve(owners, steps[:-1])
    how, key = steps[-1]
    obj = getattr(parent, key) if how == "attr" else parent[key]
    owners[steps] = obj
    return obj


def _read(owner: Any, step: Step, kind: str) -> Any:
    how, key = step
    return _measure(getattr(owner, key) if how == "attr" else owner[key], kind)


def _measure(obj: Any, kind: str) -> Any:
    """What a watched value is compared by: itself, its length, its keys, or a tensor's identity and version."""
    if kind == "value":
        return obj
    if kind == "len":
        return len(obj)
    if kind == "keys":
        return tuple(obj.keys()) if hasattr(obj, "keys") else tuple(obj)
    if kind == "tensor":
        return (id(obj), obj._version) if isinstance(obj, torch.Tensor) else ("not a tensor", id(obj))
    return obj


_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, (tuple, frozenset)) and all(_plain(v) for v in value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _sources(listing: str) -> list[str]:
    return [s for s in re.findall(r'"((?:[^"\\]|\\.)*)"', listing)] or [listing]


def _readable(source: str) -> str:
    """A Dynamo source as the script would write it: L['mod'].history -> the module's history."""
    hook = re.search(r"\._(forward|forward_pre|backward|backward_pre)_hooks", source)
    if hook is not None:
        path = ".".join(re.findall(r"_modules\['([^']+)'\]", source[:hook.start()]))
        return f"what a {hook.group(1).replace('_', '-')} hook on {path or 'the module'} changes"
    text = re.sub(r"^L\['mod'\]", "self", source)
    text = re.sub(r"^L\['(\w+)'\]", r"\1", text)
    return _global_name(text) if text.startswith("G[") else text


def _global_name(name: str) -> str:
    m = _IMPORT.match(name)
    if m is None:
        return re.sub(r"^G\['(\w+)'\]", r"\1", name)
    return m.group(1).replace("_dot_", ".") + name[m.end():]


def _library_owned(name: str) -> bool:
    """True when the global a guard or a side effect names belongs to an installed package or the standard
    library: the last module object its name passes through lives there."""
    m = _IMPORT.search(name)
    if m is None:
        return False  # a global of the frame itself: the module's own code
    module = sys.modules.get(m.group(1).replace("_dot_", "."))
    if module is None:
        return False
    rest = name[m.end():]
    for how_attr in _STEP.finditer(rest):
        attr = how_attr.group(1)
        if attr is None:
            break
        nxt = getattr(module, attr, None)
        if not isinstance(nxt, type(sys)):
            break
        module = nxt
    return _installed(module)


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(os.path.realpath(p) for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")))
    return tuple(sorted(r.rstrip(os.sep) + os.sep for r in roots))


_ROOTS: list[tuple[str, ...]] = []


def _installed(module: Any) -> bool:
    name = getattr(module, "__name__", "")
    if name in sys.builtin_module_names or name.split(".")[0] in ("torch", "aitune"):
        return True
    file = getattr(module, "__file__", None)
    if not file:
        return False
    if not _ROOTS:
        _ROOTS.append(_library_roots())
    return os.path.realpath(file).startswith(_ROOTS[0])
