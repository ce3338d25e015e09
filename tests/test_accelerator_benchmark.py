"""``python -m benchmarks.accelerator`` end to end at toy sizes (slow: MJX compiles)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_accelerator_benchmark_prints_one_table(tmp_path):
    tiny = ["--gridworld-batch", "64", "--mjx-batch", "2", "--ppo-chunks", "1"]
    tiny += ["--td3-seeds", "1", "2", "--td3-steps", "4", "--diffusion-width", "32"]
    tiny += ["--diffusion-steps", "1", "--sample-batch", "2", "--repeats", "1"]
    tiny += ["--target-seconds", "0.1", "--out", str(tmp_path / "a.json")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "benchmarks.accelerator", *tiny]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "a.json").read_text())
    assert len(rows) == 7 and all(r["device"] == "cpu (cpu)" for r in rows)
    assert all(r["compile_s"] > 0 for r in rows)
    assert "| measurement | figure | compile s | target (one GPU) |" in done.stdout
