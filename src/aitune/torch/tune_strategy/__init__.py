"""Tuning strategies: how candidate backends are tried and one is chosen."""

from aitune.torch.tune_strategy._base import CandidateResult, TuneJob, TuneOutcome, TuneStrategy, check
from aitune.torch.tune_strategy._strategies import (
    STRATEGY_NAMES,
    FirstWinsStrategy,
    HighestThroughputStrategy,
    MaxThroughputStrategy,
    OneBackendStrategy,
    strategy_named,
)

__all__ = [
    "CandidateResult",
    "FirstWinsStrategy",
    "HighestThroughputStrategy",
    "MaxThroughputStrategy",
    "OneBackendStrategy",
    "STRATEGY_NAMES",
    "TuneJob",
    "TuneOutcome",
    "TuneStrategy",
    "check",
    "strategy_named",
]
