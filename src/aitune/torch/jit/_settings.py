"""A read-through view of the global and JIT settings for the call path.

Reads the live config objects (so a user's `config.min_samples = 5` after enabling still applies); it is only
consulted on the slow path (discovery, recording, tuning), never for an untracked or detached module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class _Settings:
    @property
    def _jit(self) -> Any:
        from aitune.torch.jit.config import config

        return config

    @property
    def _global(self) -> Any:
        from aitune.torch.config import config

        return config

    @property
    def mode(self) -> str:
        return str(getattr(self._jit.mode, "value", self._jit.mode))

    @property
    def tune_eagerly(self) -> bool:
        return self.mode == "tune_eager"

    @property
    def record_nested(self) -> bool:
        """In deferred and inspect modes every level records at once, so a parent that stays eager does not
        leave its children without samples."""
        return self.mode != "tune_eager"

    @property
    def min_samples(self) -> int:
        return int(self._jit.min_samples)

    @property
    def max_depth_level(self) -> int:
        return int(self._jit.max_depth_level)

    @property
    def min_parameters(self) -> int:
        return int(self._jit.min_parameters)

    @property
    def skip_modules(self) -> list[str]:
        return list(self._jit.skip_modules)

    @property
    def exclude_packages(self) -> list[str]:
        return list(self._jit.exclude_packages)

    @property
    def report(self) -> Path | None:
        return self._jit.report

    @property
    def summary(self) -> bool:
        return bool(self._jit.summary)

    @property
    def progress(self) -> bool:
        return bool(self._jit.progress)

    @property
    def max_num_samples_stored(self) -> int:
        return int(self._global.max_num_samples_stored)

    @property
    def max_samples_bytes(self) -> int:
        return int(self._global.max_samples_bytes)

    @property
    def strict(self) -> bool:
        return bool(self._global.strict)


SETTINGS = _Settings()
