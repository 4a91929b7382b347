"""The HTML report beside the JSON one: self-contained, and rendered as it should be by a real headless
browser (Chromium; CI installs it, elsewhere the browser tests are skipped when it is missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from aitune.torch.backend import TorchEagerBackend
from aitune.torch.jit import _report, enable_jit_tuning
from aitune.torch.jit._html import render
from aitune.torch.jit.config import config as jit_config

from .helpers import Net

pytestmark = pytest.mark.usefixtures("fast_tuning")

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI") == "true":
        pytest.fail("CI must open the HTML report in a headless browser: .ci/run installs chromium-headless-shell")
    pytest.skip("no headless Chromium here (CI installs chromium-headless-shell)")


def _dom(page: Path, fragment: str = "") -> str:
    out = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          page.as_uri() + fragment], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Uncaught" not in out.stderr, out.stderr[-2000:]
    return out.stdout


def _tuned_report(tmp_path: Path) -> Path:
    jit_config.backends = [TorchEagerBackend()]
    jit_config.min_samples = 2
    jit_config.report = tmp_path / "run.json"
    enable_jit_tuning()
    net = Net().eval()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(4, 16))
    written = _report.write_report()
    assert written == tmp_path / "run.json"
    return tmp_path / "run.html"


def test_the_page_embeds_the_report_and_fetches_nothing() -> None:
    report = {"version": 1, "environment": {"mode": "tune_eager"},
              "modules": [{"name": "Net", "class": "x.Net", "state": "eager", "depth": 0, "parent": None,
                           "reason": "</script><script>alert(1)</script>", "calls": 1}]}
    page = render(report)
    assert "</script><script>alert(1)" not in page  # data cannot close the script that holds it
    embedded = page.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded.replace("<\\/", "</")) == report
    assert "http://" not in page and "https://" not in page and "src=" not in page


def test_a_browser_shows_the_tree_candidates_and_where_the_time_goes(tmp_path: Path) -> None:
    page = _tuned_report(tmp_path)
    assert page.is_file()
    dom = _dom(page)
    assert '<span class="name">Net</span>' in dom and 'class="state tuned"' in dom
    assert "TorchEagerBackend" in dom and "<th>latency ms</th>" in dom  # the candidates table
    assert 'class="tuned-bar"' in dom and 'class="eager-bar"' in dom  # before and after, per module
    assert "modules</span>" in dom or 'id="status"' in dom


def test_the_filter_keeps_matching_modules(tmp_path: Path) -> None:
    page = _tuned_report(tmp_path)
    dom = _dom(page, "#filter=nosuchmodule")
    assert 'class="root module hidden"' in dom
    dom = _dom(page, "#filter=tuned")
    assert 'class="root module"' in dom and 'class="root module hidden"' not in dom


def test_enable_inspection_records_where_the_time_goes_and_saves_the_page(tmp_path: Path) -> None:
    from aitune.torch.jit import enable_inspection

    inspection = enable_inspection()
    net = Net().eval()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 16))
    page = inspection.save_report(tmp_path / "resnet.html", "resnet")
    assert page == tmp_path / "resnet.html" and page.is_file() and (tmp_path / "resnet.json").is_file()
    report = json.loads((tmp_path / "resnet.json").read_text())
    net_entry = {m["name"]: m for m in report["modules"]}["Net"]
    assert net_entry["state"] == "recording" and net_entry["recorded_eager_ms"] > 0, net_entry
    assert len(report["modules"]) >= 4  # inspect mode records every level: Net, its blocks, its head
    dom = _dom(page)
    assert 'class="eager-bar"' in dom and "Net.blocks.0" in dom
