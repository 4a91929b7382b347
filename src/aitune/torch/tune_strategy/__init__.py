"""Tuning strategies: how candidate backends are tried and one is chosen."""

from aitune.torch.tune_strategy._base import CandidateResult, TuneJob, TuneOutcome, TuneStrategy
from aitune.torch.tune_strategy._strategies import FirstWinsStrategy, HighestThroughputStrategy, OneBackendStrategy

__all__ = [
    "CandidateResult",
    "FirstWinsStrategy",
    "HighestThroughputStrategy",
    "OneBackendStrategy",
    "TuneJob",
    "TuneOutcome",
    "TuneStrategy",
]
