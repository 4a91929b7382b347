"""`python -m aitune doctor`: see `aitune._doctor`."""

import sys

from aitune._doctor import main

raise SystemExit(main(sys.argv[1:]))
