"""End-to-end: a checkpoint written by one process is loaded and served by another, as in deployment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.e2e.harness import SCRIPTS, TIMEOUT_S, base_env


def _run(action: str, checkpoint: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPTS / "explicit_api.py"), action, str(checkpoint), str(out)],
                          env=base_env(), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"{action} failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=True)  # type: ignore[no-any-return]


def test_checkpoint_saved_in_one_process_serves_in_another(tmp_path: Path) -> None:
    checkpoint = tmp_path / "encoder.ait"
    saved = _run("save", checkpoint, tmp_path / "save.pt")
    assert checkpoint.is_file() and (tmp_path / "encoder_sha256_sums.txt").is_file()
    loaded = _run("load", checkpoint, tmp_path / "load.pt")
    assert int(loaded["served"]) == 3, "the loaded engine should serve every call in the tuned range"
    from tests.e2e.scripts.explicit_api import Encoder

    torch.manual_seed(0)
    reference = Encoder().eval()
    with torch.no_grad():
        for x, got, first in zip(loaded["inputs"], loaded["outputs"], saved["outputs"]):
            torch.testing.assert_close(got, reference(x), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got, first)
