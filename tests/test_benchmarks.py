"""Every ``python -m benchmarks.<name>`` end to end at toy sizes, in a fresh process.

The figures are not the point (XLA skips its expensive passes, sizes are tiny): each benchmark
must run to its end, print its table and write its JSON. The cheap ones run in the default
suite; those that compile large programs (MJX, many learners) are ``slow``. Every benchmark
module with a ``main`` has a case here (checked below).
"""

from __future__ import annotations

import json
import pkgutil

import pytest
from fresh_process import run_module

import benchmarks

slow = pytest.mark.slow
#: benchmark -> tiny arguments (``--out`` is added)
TINY = {
    "gridworld_throughput": "--batch-sizes 1 4 --envs GoalSequence MultiSkill --peers "
    "--scan-length 8 --target-seconds 0.1 --repeats 1",
    "mujoco_throughput": "--batch-sizes 1 2 --backends native --scan-length 4 "
    "--target-seconds 0.1 --repeats 1 --no-gymnasium-peer",
    "sac_throughput": "--envs gymnax:Pendulum-v1 --utds 1 --gradient-steps 20 --repeats 1 "
    "--buffer-capacity 2000 --buffer-steps 100",
    "diffusion_throughput": "--widths 32 --batches 16 --train-steps 2 --sample-steps 2 --repeats 1",
    "sbd_throughput": "--batches 1 4 --hidden 8 --train-steps 2 --train-batch 2 --repeats 1",
    "ppo_cartpole": "--seeds 1 --chunks 1 --updates-per-chunk 2",
    "seed_scaling": "--seeds 1 2 --devices 1 --total-steps 2048 --repeats 1",
    "offline_throughput": "--steps 10 --repeats 1 --seeds 1 --dataset-size 2000",
    "psec": "--width 16 --batch-size 8 --train-steps 2 --skills 1 2 --batches 1 4 --repeats 1",
    "oer": "--steps-per-task 10 --batch-size 16 --tasks 2 --task-size 500 --buffer-size 50 "
    "--dynamics-steps 5 --sizes 500 --repeats 1",
    "cultural": "--seeds 1 --repeats 1 --population 2 --tasks 2 --iw-steps 1024",
    "kill_resume": "--entries ppo --kills 1 --max-kills 1",
}
SLOW = {
    "ppo_cartpole",
    "seed_scaling",
    "offline_throughput",
    "psec",
    "oer",
    "cultural",
    "kill_resume",
}
ELSEWHERE = {"timing", "accelerator"}  # the shared timer; the accelerator has its own test below


def test_every_benchmark_has_a_case():
    names = {m.name for m in pkgutil.iter_modules(benchmarks.__path__)}
    assert names - ELSEWHERE == set(TINY), "give every new benchmark tiny arguments in TINY"


@pytest.mark.parametrize("name", [pytest.param(n, marks=[slow] if n in SLOW else []) for n in TINY])
def test_benchmark_runs_at_toy_sizes(name, tmp_path):
    out = tmp_path / "figures.json"
    stdout = run_module(f"benchmarks.{name}", [*TINY[name].split(), "--out", str(out)], timeout=900)
    saved = json.loads(out.read_text())
    figures = saved["figures"]
    assert saved["machine"]["cpu_count"] >= 1  # speed figures name the machine they came from
    if name == "kill_resume":  # a campaign, not a table: every killed run resumed identically
        assert figures["entries"]["ppo"]["identical"] == 1, stdout[-2000:]
    else:
        assert "|---" in stdout, f"{name} printed no table:\n{stdout[-2000:]}"
    assert figures


@slow
def test_accelerator_benchmark_prints_one_table(tmp_path):
    tiny = ["--gridworld-batch", "64", "--mjx-batch", "2", "--ppo-chunks", "1"]
    tiny += ["--td3-seeds", "1", "2", "--td3-steps", "4", "--diffusion-width", "32"]
    tiny += ["--diffusion-steps", "1", "--sample-batch", "2", "--repeats", "1"]
    tiny += ["--target-seconds", "0.1", "--out", str(tmp_path / "a.json")]
    stdout = run_module("benchmarks.accelerator", tiny, xla_flags=None, timeout=900)
    rows = json.loads((tmp_path / "a.json").read_text())["figures"]
    assert len(rows) == 7 and all(r["device"] == "cpu (cpu)" for r in rows)
    assert all(r["compile_s"] > 0 for r in rows)
    assert "| measurement | figure | compile s | target (one GPU) |" in stdout
