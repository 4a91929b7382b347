"""The life of one input signature, shared by JIT mode (`aitune.torch.jit`) and the explicit API (`ait.Module`).

It knows neither front; each front calls it per signature:

- `_record`: keep copies of a call's inputs and outputs under THE process-wide sample budget; release them.
- `_route`: send a call to its engine (in range) or run it eagerly; THE fail-open policy and THE re-entrancy
  guard (aitune's own work on a thread passes straight through every front).
- `_decide`: tune a recorded signature (the persistent cache first, then the strategy) and commit: install the
  winner, or leave it eager with the reason; strict mode raises.
- `_reuse`: the persistent cache's part of deciding (key, reuse a stored decision, store a new one).
- `_confirm`: an engine that came from a file serves alone only after it matched eager on live calls.
- `_state`, `_hooks`: what a forward changes in its module; the module's hooks run around engines, once a call.
- `_purity`: is a call a pure function of its tensors (Dynamo's guards and side effects)? Only such calls go to
  engines that run no Python, which then watch the plain values they baked in.
- `_weights`: weight writes through `Parameter.data`, which no version counter sees.
- `_quiet`, `_rng`: aitune's own work leaves no trace: libraries' notices go to aitune's log, random number
  generators are restored.
"""
