"""The explicit API (`ait.Module`, `ait.tune`, `ait.inspect`, `ait.wrap`, `ait.save`, `ait.load`), re-exported by
`aitune.torch`. Its calls go through the shared signature runtime (`aitune.torch._signature`), as JIT mode's do.

- `_runtime`: `ModuleRuntime`, the state of one wrapper and its per-call path.
- `_module`: `ait.Module`, the transparent wrapper; finding the wrappers of a model or pipeline.
- `_api`: `ait.tune`; `_dataset`: how dataset items are fed.
- `_inspect`, `_wrap`: `ait.inspect`, `ait.wrap`.
- `_checkpoint`, `_checkpoint_format`: `ait.save`, `ait.load` and the `x.ait` format.
"""
