"""Run ``python -m <module>`` in a fresh process, as a user would, for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: XLA skipping its expensive optimisation passes: compiling dominates tiny runs, and the
#: numbers are not the point
FAST_XLA = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false --xla_cpu_use_thunk_runtime=false"
)


def run_module(
    module: str, argv: list[str], xla_flags: str | None = FAST_XLA, timeout: float | None = None
) -> str:
    """``python -m module *argv`` from the repository root on the CPU (with ``xla_flags`` as
    ``XLA_FLAGS`` unless None); asserts it exits 0 and returns its stdout."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    cmd = [sys.executable, "-m", module, *argv]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}"
    return done.stdout
