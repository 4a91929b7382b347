"""The settings machinery shared by every scope (`aitune.torch.config`, `aitune.torch.jit.config`).

`_problems`: error messages that name a value's field, source and what is accepted. `_model`: the settings base
class and the registry of scopes (each settings module registers its singleton when it is imported). `_sources`:
the explicit chain of sources (defaults < TOML file < environment < .py file < code) that loads them.
"""
