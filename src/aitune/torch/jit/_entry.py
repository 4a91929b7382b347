"""Entry points NVIDIA AITune's JIT users call: a scope that turns tuning on, and the live module hierarchy.

`prepare_for_jit_tuning()` (a context manager) and `patch_for_jit_tuning` (a decorator) turn JIT tuning on, as
`import aitune.torch.jit.enable` does, and leave it on: in NVIDIA AITune they make the modules built inside the
scope candidates; here the hook works on calls, so every module called from then on is a candidate, whenever and
wherever it was built. `print_hierarchy()` prints the tracked modules as a tree, from the live state.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def prepare_for_jit_tuning() -> Iterator[None]:
    """Turn JIT tuning on (if it is not) for the rest of the process."""
    from aitune.torch.jit import enable_jit_tuning

    enable_jit_tuning()
    yield


def patch_for_jit_tuning(fn: F) -> F:
    """Decorator: JIT tuning is on (for the rest of the process) from the decorated function's first call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with prepare_for_jit_tuning():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def print_hierarchy(file: IO[str] | None = None) -> None:
    """The tracked modules as a tree: state, backend, calls, latencies and why a module was not tuned."""
    from aitune.torch.jit import _report

    out = file if file is not None else sys.stdout
    modules = _report.build_report()["modules"]
    if not modules:
        print("aitune: no module tracked yet (is JIT tuning on, and has the model been called?)", file=out)
        return
    for m in modules:
        speed = f", {m['speedup']:.2f}x" if m.get("speedup") else ""
        backend = f" {m.get('backend_description') or m['backend']}" if m.get("backend") else ""
        why = f" ({m['reason']})" if m.get("reason") and m["state"] != "tuned" else ""
        print(f"{'  ' * int(m['depth'])}{m['name'].rsplit('.', 1)[-1] if m['depth'] else m['name']} "
              f"[{m['class'].rsplit('.', 1)[-1]}] {m['state']}{backend}, {m['calls']} calls{speed}{why}", file=out)


class Inspection:
    """What `enable_inspection()` returns: `save_report(path)` writes the report as it stands now."""

    def save_report(self, path: str | Path, model_name: str | None = None) -> Path:
        """Write the HTML report to `path` (a `.html` name; the JSON report goes beside it), or the JSON report
        and its HTML page beside it for a `.json` name; a directory gets `<model_name or aitune>.html`.
        Returns the HTML page's path."""
        from aitune.torch.jit import _report

        target = Path(path).expanduser()
        if target.is_dir() or not target.suffix:
            target = target / f"{model_name or 'aitune'}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        _report.write_report(target.with_suffix(".json"))
        page = target.with_suffix(".html")
        if target.suffix not in (".html", ".json"):  # another suffix: the page at that very name too
            _report.write_html(_report.build_report(), target)
            return target
        return page


def enable_inspection() -> Inspection:
    """Inspect mode (record and report, never compile; eager time per module measured on recorded calls), on
    from now: NVIDIA AITune's `aitune.torch.jit.enable_inspection()`."""
    from aitune.torch.jit import enable_jit_tuning
    from aitune.torch.jit.config import JITMode
    from aitune.torch.jit.config import config as jit_config

    jit_config.mode = JITMode.INSPECT
    enable_jit_tuning()
    return Inspection()
