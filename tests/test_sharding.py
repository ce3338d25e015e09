"""Seeds split over 8 simulated CPU devices (``jax.sharding``): the same per-seed results as one
device, a resume on another device count, and a clear error for seeds that do not divide.

Each run is a fresh process (``tests/sharded_run.py``): the device count is fixed when JAX
starts, and the rest of the suite keeps its one device. Per-seed results agree to float32
rounding, not bit for bit: XLA compiles the per-device program for a batch of 1 seed instead of
8, which changes how it fuses and vectorises the same arithmetic (differences of about 3e-8 in
the parameters after 8 PPO updates; episode returns and lengths identical).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("sharded_run.py")
pytestmark = pytest.mark.xdist_group("sharding")


def run(tmp: Path, name: str, devices: int, seeds: int, *extra: str, folder: str = "") -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    out = tmp / f"{name}.npz"
    cmd = [sys.executable, str(SCRIPT), str(out), str(tmp / (folder or name)), str(seeds), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:
        return {"error": done.stderr}
    with np.load(out) as f:
        return dict(f)


def same_seeds(a: dict, b: dict) -> None:
    for k in a:
        if k.startswith(("m_", "p_")):
            if k in ("m_return", "m_length", "m_episodes"):
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
            else:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_eight_devices_give_one_devices_per_seed_results_and_resume_on_two(tmp_path):
    one = run(tmp_path, "one", 1, 8)
    # half the updates on 8 devices, the rest resumed from its checkpoint on 2
    half = run(tmp_path, "half", 8, 8, "4", folder="resumed")
    assert int(half["devices"]) == 8 and "'seeds': 8" in str(half["sharding"])
    assert "'seeds': 8" in str(half["stage_sharding"])  # seedwise stages split too
    assert half["m_return"].shape == (8, 4)
    same_seeds({k: v[:, :4] for k, v in one.items() if k.startswith("m_")}, half)
    resumed = run(tmp_path, "resumed", 2, 8, folder="resumed")
    assert int(resumed["devices"]) == 2
    same_seeds(one, resumed)


def test_seeds_that_do_not_divide_over_the_devices_are_refused(monkeypatch):
    import jax

    from agents.core import seed_sharding

    monkeypatch.setattr(jax, "devices", lambda: [jax.local_devices()[0]] * 8)  # 8 "devices"
    with pytest.raises(ValueError, match="6 seeds do not divide over the 8 cpu devices"):
        seed_sharding(6)
