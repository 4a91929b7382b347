"""aitune: a zero-code, just-in-time auto-tuner for PyTorch inference.

The PyTorch integration lives in :mod:`aitune.torch`; importing this package alone imports nothing heavy.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
