"""aitune override file: try torch.compile (Inductor) with max-autotune, and time candidates longer.

Use it with:
    AITUNE_JIT_CONFIG=configs/inductor_max_autotune.py AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python infer.py

aitune executes this file once when the hook loads its settings, with `config` (JIT settings),
`global_config` (global settings) and `JITMode` already defined. Every assignment is validated; a bad value
stops start-up with an error naming this file and line. Settings assigned from the script itself win.
max-autotune benchmarks many kernel variants: expect minutes of compilation per module on a GPU.
"""

# aitune defines these names before running the file; importing them too (the same objects) keeps the file
# a plain module that editors, linters and type checkers understand.
from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.config import config as global_config
from aitune.torch.jit.config import JITMode, config

config.mode = JITMode.TUNE_EAGER
config.backends = [
    TorchInductorJitBackend(mode="max-autotune"),
    TorchInductorJitBackend(),  # the default mode, in case max-autotune fails for a module
]
config.min_samples = 3

global_config.timing_iterations = 50
global_config.timing_max_seconds = 5.0
