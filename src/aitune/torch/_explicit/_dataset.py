"""How the explicit API feeds a dataset to a model, a pipeline or a function (`ait.tune`, `ait.inspect`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch


def run_dataset(f: Callable[..., Any], dataset: Iterable[Any]) -> int:
    """Call `f` on every item (mapping: keywords; tuple or list: positional; else one argument), no grad."""
    count = 0
    with torch.no_grad():
        for item in dataset:
            if isinstance(item, Mapping):
                f(**item)
            elif isinstance(item, (tuple, list)):
                f(*item)
            else:
                f(item)
            count += 1
    return count
