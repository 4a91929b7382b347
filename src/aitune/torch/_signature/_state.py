"""Does a module's forward change the module itself? Detected on recorded calls, never assumed.

A forward that updates a buffer in place (a running statistic), replaces a buffer or parameter, or sets a plain
attribute (a counter, a cached value) carries state an engine would not reproduce: an engine runs the module's
computation, not its Python side effects on itself. `snapshot` takes what can change (buffer and parameter
identities and versions, the plain attributes of every submodule) before a recorded call, `changes` says what
differs after it. The first call of a module is allowed one change (lazy set-up on first use is common); a change
on any later recorded call keeps the module eager (`SignatureRecord.state_change` says what changed).

Lists, dicts, sets and deques the module holds are compared by identity and length (a forward appending to
`self.history` changes it). Known limits: state held outside the module (a global, an object the forward reaches
through a closure) is not seen here (`_purity` traces for it); in-place writes through `.data` do not bump
version counters (`_weights` notices them).
"""

from __future__ import annotations

import collections
from typing import Any

import torch

#: nn.Module's own bookkeeping in `__dict__`: not the user's state.
_INTERNAL = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_backward_pre_hooks",
                       "_backward_hooks", "_is_full_backward_hook", "_forward_hooks", "_forward_hooks_with_kwargs",
                       "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
                       "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                       "_load_state_dict_post_hooks", "_compiled_call_impl", "training", "forward"})
_PLAIN = (bool, int, float, str, bytes, type(None))

Snapshot = dict[tuple[str, str], Any]


def _value(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return ("tensor", id(v), v._version)
    if isinstance(v, _PLAIN):
        return ("plain", v)
    if isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v):
        return ("plain", v)
    if isinstance(v, (list, dict, set, collections.deque)):
        return ("container", id(v), len(v))  # a forward appending to a list it holds changes its length
    return ("object", id(v))


def snapshot(module: torch.nn.Module) -> Snapshot:
    """What a forward could change about `module` and its submodules."""
    found: Snapshot = {}
    for path, sub in module.named_modules(remove_duplicate=True):
        for name, p in sub._parameters.items():
            found[(path, f"parameter {name}")] = _value(p)
        for name, b in sub._buffers.items():
            found[(path, f"buffer {name}")] = _value(b)
        for name, v in sub.__dict__.items():
            if name not in _INTERNAL:
                found[(path, f"attribute {name}")] = _value(v)
    return found


def changes(before: Snapshot, after: Snapshot) -> str | None:
    """What differs, in words (the first few), or None."""
    differing = [key for key in before.keys() | after.keys() if before.get(key) != after.get(key)]
    if not differing:
        return None
    shown = ", ".join(f"{what} of {path or 'the module'}" for path, what in sorted(differing)[:3])
    more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
    return shown + more
