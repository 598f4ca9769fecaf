"""demo.sh end to end at a reduced size (the full demo is the same script with defaults)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from utils.config import REPO_ROOT


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "demo"), "DATA": str(tmp_path / "data"),
           "DEMO_SCALE": "0.2", "ADAPT_EPOCHS": "1", "TOKEN_EPOCHS": "1"}
    result = subprocess.run(["bash", "demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for header in ("interactive", "sketch_only", "text_only", "interactive_mq", "round 6"):
        assert header in result.stdout
    results = json.loads((tmp_path / "demo" / "token" / "results.json").read_text())
    assert set(results["tasks"]) >= {"interactive", "sketch_only", "text_only"}
    assert len(results["rounds"]) == 7
    assert sorted(p.name for p in (tmp_path / "demo" / "token" / "vis").iterdir()) == [
        "query_000.png", "query_001.png"]
    assert (tmp_path / "demo" / "token" / "rounds.png").is_file()
    assert (tmp_path / "demo" / "adapt" / "results.json").is_file()
    # A second run reuses what the first one finished.
    again = subprocess.run(["bash", "demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{tmp_path / 'demo' / 'adapt'}: already trained (all 1 epoch(s)), skipped" \
        in again.stdout
    assert f"{tmp_path / 'demo' / 'token'}: already trained" in again.stdout
