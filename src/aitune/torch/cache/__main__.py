"""`python -m aitune.torch.cache list|clear|evict|adopt`: inspect, empty and adopt the persistent cache.

Every command acts only on a directory aitune marked as its cache, and only on the files it wrote there; any
other directory is refused with a message saying why (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from aitune.torch import cache
from aitune.torch._errors import CacheError, ConfigError
from aitune.torch._units import human_bytes


def _ago(t: float) -> str:
    s = max(0.0, time.time() - t)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.0f} h ago"


def _plural(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aitune.torch.cache", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("list", "list the cached decisions, most recently used first"),
                       ("clear", "delete every cached decision and engine"),
                       ("evict", "evict least-recently-used entries down to a size"),
                       ("adopt", "sign the intact entries of a cache directory made elsewhere with your secret, "
                                 "so that your runs load them (only for a directory whose origin you trust)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", default=None, help="cache directory (default: AITUNE_JIT_CACHE_DIR)")
        if name == "list":
            p.add_argument("--verify", action="store_true", help="check every signature and file hash too")
            p.add_argument("--json", action="store_true", help="print JSON")
        if name == "evict":
            p.add_argument("--max-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        root = cache.directory(args.dir)
        if not os.path.lexists(root) and args.command in ("list", "clear"):
            print(f"{root}: no cache directory here (nothing to {args.command})")
            return 0
        if args.command == "clear":
            n = cache.clear(root)
            print(f"cleared {_plural(n)} from {root}")
            return 0
        if args.command == "evict":
            gone = cache.evict(root, args.max_bytes)
            print(f"evicted {_plural(len(gone))} from {root}")
            return 0
        if args.command == "adopt":
            signed, skipped = cache.adopt(root)
            print(f"signed {_plural(len(signed))} in {root} with your cache secret")
            for key, why in skipped:
                print(f"  left unsigned: {key[:12]} ({why})")
            return 0
        infos = cache.entries(root, verify=args.verify)
    except (ConfigError, CacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the directory passed its checks but cannot be written now (read-only mount, full disk)
        print(f"error: {args.command} failed in {args.dir or 'the cache directory'}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{**i.__dict__, "path": str(i.path)} for i in infos], indent=1))
        return 0
    print(f"{root}: {_plural(len(infos))}, {human_bytes(sum(i.size_bytes for i in infos))}")
    for i in infos:
        what = i.backend if i.decision == "tuned" else i.decision
        state = "" if i.valid else f"  INVALID: {i.problem}"
        size = human_bytes(i.size_bytes)
        print(f"  {i.key[:12]}  {i.module:<32} {what:<44} {size:>10}  used {_ago(i.last_used)}{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
