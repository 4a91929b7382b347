"""`python -m aitune doctor` says whether the hook will turn on, and why not; an override file that ends the
script gets a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AITUNE_", "AUTOWRAPT_"))}
    return subprocess.run([sys.executable, *args], env={**full, **env}, capture_output=True, text=True,
                          timeout=600, cwd=str(Path(__file__).parent))


def test_doctor_says_the_hook_turns_on_when_everything_is_in_place() -> None:
    out = _run(["-m", "aitune", "doctor"], AUTOWRAPT_BOOTSTRAP="aitune_enable_jit_tuning")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "turned JIT tuning on when torch was imported" in out.stdout
    assert "[aitune] JIT tuning enabled" in out.stdout  # the documented sign


def test_doctor_names_a_misspelt_or_missing_variable() -> None:
    out = _run(["-m", "aitune", "doctor"], AUTOWRAPT_BOOTSTRAP="aitune_enable_jit_tunning")
    assert out.returncode == 1
    assert "did you mean 'aitune_enable_jit_tuning'" in out.stdout, out.stdout
    out = _run(["-m", "aitune", "doctor"])
    assert out.returncode == 1 and "AUTOWRAPT_BOOTSTRAP is not set" in out.stdout, out.stdout


def test_an_override_file_that_calls_sys_exit_is_named(tmp_path: Path) -> None:
    override = tmp_path / "settings.py"
    override.write_text("import sys\nconfig.min_samples = 2\nsys.exit(3)\n")
    out = _run(["-c", "import torch; print('script ran')"], AUTOWRAPT_BOOTSTRAP="aitune_enable_jit_tuning",
               AITUNE_JIT_CONFIG=str(override))
    assert out.returncode == 2 and "script ran" not in out.stdout
    assert f"{override}:3: the override file called sys.exit(3)" in out.stderr, out.stderr
