"""JIT mode's use of the persistent cache: the store named by `AITUNE_JIT_CACHE_DIR`, and PyTorch's own compile
caches pointed into it so that JIT-kind backends (torch.compile) also start faster the second time."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aitune.torch.cache._store import EngineStore

logger = logging.getLogger(__name__)

_stores: dict[tuple[Path, int], EngineStore] = {}


def store_from_config() -> EngineStore | None:
    """The store of the configured cache directory, or None when the cache is off."""
    from aitune.torch.jit.config import config

    root = config.cache_dir
    if root is None:
        return None
    key = (Path(root), int(config.cache_max_bytes))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = EngineStore(*key)
    return store


def _is_torch_default(path: str) -> bool:
    """torch writes its default into TORCHINDUCTOR_CACHE_DIR the first time it resolves it (some builds do so
    while torch itself imports), so a value equal to that default was not chosen by the user."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return False
    return os.path.abspath(path) == os.path.abspath(default_cache_dir())


def use_torch_compile_caches(root: Path) -> Path | None:
    """Point TorchInductor's on-disk caches (FX graph, AOTAutograd, Triton kernels) under `root/torch`, unless the
    user already chose a place with TORCHINDUCTOR_CACHE_DIR. Returns the directory in use, or None if unchanged.

    Must run before the first compile: Inductor reads the variable whenever it resolves its cache directory.
    """
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and not _is_torch_default(current):
        logger.debug("TORCHINDUCTOR_CACHE_DIR is set by the user; leaving it")
        return None
    torch_dir = Path(root) / "torch"
    torch_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(torch_dir)
    try:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
    except Exception:
        logger.debug("could not switch on Inductor's caches", exc_info=True)
    return torch_dir
