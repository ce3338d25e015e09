"""A run of ``run_chunked`` on however many (simulated) devices this process has; run by
``tests/test_sharding.py`` in fresh processes, since the device count is fixed at start-up.

    python tests/sharded_run.py OUT_NPZ FOLDER SEEDS [UPDATES]

Trains a tiny PPO on CartPole for SEEDS seeds (UPDATES of its updates, default all) in FOLDER
(resuming whatever is there) and runs one ``seedwise`` stage; saves its per-seed metrics, final
parameters and the stage's output to OUT_NPZ.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

import envs
from agents.ppo import PPOConfig, make_ppo
from experiments.runner import RunFolder, run_chunked
from experiments.study import seedwise

out, folder, seeds = sys.argv[1], sys.argv[2], int(sys.argv[3])
env, params = envs.make("gymnax:CartPole-v1")
config = PPOConfig(num_envs=4, num_steps=16, total_steps=64 * 8, num_minibatches=2, hidden=(16,))
agent = make_ppo(config, env, params)
if len(sys.argv) > 4:  # stop early: the same run, cut short (its checkpoints are the full run's)
    agent.num_updates = int(sys.argv[4])
state, metrics, _ = run_chunked(agent, jax.random.key(0), seeds, RunFolder(folder, {}), 2, False)
leaves = jax.tree.leaves(agent.policy_params(state))
stage = seedwise(
    lambda k: {"x": jax.random.normal(k, (3,))}, jax.random.split(jax.random.key(1), seeds)
)["x"]
np.savez(out, devices=jax.device_count(), sharding=str(leaves[0].sharding), m_stage=stage,
         stage_sharding=str(stage.sharding),
         **{f"m_{k}": v for k, v in metrics.items()}, **{f"p_{i}": np.asarray(x)
                                                        for i, x in enumerate(leaves)})  # fmt: skip
