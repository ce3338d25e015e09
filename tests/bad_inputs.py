"""Bad inputs across the public surface: is each one named, or does something pass silently?

Each case feeds one bad input (a config, a CLI flag, an env param, an action, a dataset, a
diverging learning rate) to the public entry point a researcher would use and sorts the outcome:
**named** (an error whose message matches what the case expects: the problem and the fix),
**counted** (accepted on purpose and counted, e.g. a clipped continuous action), **opaque** (an
error that does not say what was wrong) or **silent** (accepted without a word). Prints each
case and the totals; exits non-zero if any case is opaque or silent.

    python tests/bad_inputs.py
    python tests/bad_inputs.py --only action
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from agents.replay import Transition
from benchmarks.timing import write_json

TINY_PPO = ["--ppo.num-envs", "4", "--ppo.num-steps", "16", "--ppo.total-steps", "192"]
TINY_PPO += ["--ppo.num-minibatches", "2", "--eval-envs", "4", "--no-progress"]


def ppo_cli(*flags: str) -> None:
    """``python -m experiments.ppo <tiny settings> *flags`` in this process, into a temp folder."""
    from experiments import ppo

    with tempfile.TemporaryDirectory() as out:
        ppo.main(tyro.cli(ppo.Args, args=[*TINY_PPO, *flags, "--out", out]))


def step_with(env_name: str, action) -> dict:
    """One eager step of ``env_name`` with ``action``; its info."""
    env, params = envs.make(env_name)
    _, state = env.reset(jax.random.key(0), params)
    return env.step(jax.random.key(1), state, action, params)[-1]


def pendulum_data(n: int = 400) -> Transition:
    """Random Pendulum transitions: obs [n, 3], torques in [-2, 2], 100-step episodes."""
    k = jax.random.split(jax.random.key(0), 3)
    obs = np.asarray(jax.random.normal(k[0], (n, 3)), np.float32)
    act = np.asarray(jax.random.uniform(k[1], (n, 1), minval=-2, maxval=2), np.float32)
    truncated = (np.arange(n) % 100) == 99
    reward = np.asarray(jax.random.normal(k[2], (n,)), np.float32)
    return Transition(obs, act, reward, obs, np.zeros(n, bool), truncated)


def offline(make: str, config: dict, data: Transition | None = None) -> None:
    """``make_<make>(Config(**config), data, Pendulum)`` and, if that builds, one chunk of it."""
    from agents.iql import IQLConfig, make_iql
    from agents.td3_bc import TD3BCConfig, make_td3_bc
    from experiments.runner import RunFolder, run_chunked

    builder, cfg = {"td3_bc": (make_td3_bc, TD3BCConfig), "iql": (make_iql, IQLConfig)}[make]
    agent = builder(
        cfg(**config), pendulum_data() if data is None else data, *envs.make("gymnax:Pendulum-v1")
    )
    with tempfile.TemporaryDirectory() as out:
        run_chunked(agent, jax.random.key(0), 2, RunFolder(out, {}), 1, False)


def sac(config: dict) -> None:
    from agents.sac import SACConfig, make_sac
    from experiments.runner import RunFolder, run_chunked

    agent = make_sac(SACConfig(**config), *envs.make("gymnax:Pendulum-v1"))
    with tempfile.TemporaryDirectory() as out:
        run_chunked(agent, jax.random.key(0), 2, RunFolder(out, {}), 1, False)


def diffusion(lr: float) -> None:
    from agents.diffusion import DiffusionConfig, fit, make_diffusion

    config = DiffusionConfig(width=16, num_blocks=1, embed_dim=16, total_steps=40, lr=lr)
    fit(
        make_diffusion(config, 2),
        jax.random.normal(jax.random.key(0), (256, 2)),
        jax.random.key(1),
        chunk_steps=20,
    )


def action_model(demos: Transition, space_n: int = 4) -> None:
    from envs.core import spaces
    from skills.action_model import ActionModelConfig, make_action_model

    agent = make_action_model(ActionModelConfig(total_steps=4), spaces.Discrete(space_n), demos)
    return jax.jit(agent.train)(jax.random.key(0))[1]  # metrics: its losses


def discover(demos: Transition) -> object:
    from envs.core import spaces
    from skills.action_model import ActionModelConfig
    from skills.discover import discover

    config = ActionModelConfig(total_steps=4)
    return discover(demos.obs, demos.action, spaces.Discrete(4), model=config, gap=1.0)


def demos(n: int, t: int, action_max: int = 3) -> Transition:
    obs = np.zeros((n, t, 5), np.float32)
    action = np.full((n, t), action_max, np.int32)
    zeros = np.zeros((n, t), np.float32)
    return Transition(obs, action, zeros, obs, zeros.astype(bool), zeros.astype(bool))


def dataset_roundtrip(fn: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as root:
        fn(Path(root))


def foreign_dataset(root: Path) -> None:
    """``experiments.offline`` on a Minari dataset recorded by Minari's own DataCollector (no
    ``env_name`` of this codebase in its metadata), where it looks for HalfCheetah medium."""
    import os

    import gymnasium as gym
    import minari

    from experiments import offline

    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        collector = minari.DataCollector(gym.make("HalfCheetah-v5", max_episode_steps=20))
        for episode in range(2):
            collector.reset(seed=episode)
            for _ in range(20):
                collector.step(collector.action_space.sample())
        collector.create_dataset("skill-agents/halfcheetah-medium-v0", algorithm_name="random")
    finally:
        os.environ.pop("MINARI_DATASETS_PATH")
        if before is not None:
            os.environ["MINARI_DATASETS_PATH"] = before
    argv = ["--algos", "iql", "--tasks", "halfcheetah", "--levels", "medium", "--seeds", "1"]
    argv += ["--root", str(root), "--out", str(root / "out"), "--no-progress"]
    offline.main(tyro.cli(offline.Args, args=argv))


def checkpoint_of_another_config(root: Path) -> None:
    from agents.checkpoint import Checkpointer

    Checkpointer(root / "ck", {"lr": 1.0}).save(1, {"x": np.zeros(2)})
    (root / "ck" / "config.json").unlink()
    Checkpointer(root / "ck", {"lr": 2.0}).latest_step()


def corrupt_checkpoint(root: Path) -> None:
    from agents.checkpoint import Checkpointer

    ck = Checkpointer(root / "ck", {})
    ck.save(1, {"x": np.zeros(2)})
    for f in (root / "ck" / "1").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 7)
    ck.restore({"x": np.zeros(2)}, 1)


def second_process(root: Path) -> None:
    import subprocess
    import sys

    from experiments.runner import RunFolder

    holder = RunFolder(root / "run", {})
    code = f"from experiments.runner import RunFolder; RunFolder({str(root / 'run')!r}, {{}})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    del holder
    raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.returncode else "no error")


#: (name, what it does, regex the error (or warning, "warn:", or count, "count:") must match)
CASES: list[tuple[str, Callable[[], object], str]] = [
    ("config: PPO lr inf", lambda: ppo_cli("--ppo.lr", "inf"), r"lr=inf is invalid.*finite"),
    ("config: PPO lr -1", lambda: ppo_cli("--ppo.lr", "-1"), r"lr=-1.0 is invalid"),
    ("config: PPO hidden 0", lambda: ppo_cli("--ppo.hidden", "0"), r"layer sizes"),
    (
        "config: PPO 5e6 envs",
        lambda: ppo_cli("--ppo.num-envs", "5000000", "--ppo.total-steps", str(5_000_000 * 16)),
        r"needs about .* GiB|2\^31",
    ),
    (
        "config: PPO 2e8 envs",
        lambda: ppo_cli("--ppo.num-envs", "200000000", "--ppo.total-steps", str(200_000_000 * 16)),
        r"2\^31|GiB",
    ),
    (
        "config: PPO budget not whole batches",
        lambda: ppo_cli("--ppo.total-steps", "100"),
        r"warn:total_steps=100",
    ),
    (
        "config: PPO minibatches not dividing",
        lambda: ppo_cli("--ppo.num-minibatches", "3"),
        r"num_minibatches",
    ),
    ("cli: --eval-envs 0", lambda: ppo_cli("--eval-envs", "0"), r"--eval-envs 0"),
    (
        "cli: env-kwargs not JSON",
        lambda: ppo_cli("--env-kwargs", "{reveal_skill: true}"),
        r"is not JSON",
    ),
    ("cli: env-kwargs a list", lambda: ppo_cli("--env-kwargs", "[1, 2]"), r"JSON list"),
    ("cli: unknown env", lambda: ppo_cli("--env", "Nope"), r"Nope"),
    (
        "env param: a string for a number",
        lambda: envs.make("Hopper", gravity_scale="x"),
        r"must be a number",
    ),
    (
        "env param: gravity_scale -1",
        lambda: envs.make("Hopper", gravity_scale=-1.0),
        r"gravity_scale",
    ),
    (
        "env param: -1 in training",
        lambda: ppo_cli("--env", "Hopper", "--env-kwargs", '{"gravity_scale": -1}'),
        r"gravity_scale",
    ),
    ("env param: unknown name", lambda: envs.make("HalfCheetah", grvity=1.0), r"grvity"),
    (
        "divergence: PPO lr 1e30",
        lambda: ppo_cli("--ppo.lr", "1e30", "--ppo.max-grad-norm", "1e30"),
        r"diverged",
    ),
    (
        "divergence: PPO lr 1e6",
        lambda: ppo_cli("--ppo.lr", "1e6", "--ppo.max-grad-norm", "1e30"),
        r"diverged",
    ),
    (
        "divergence: SAC lr 1e9",
        lambda: sac(
            {
                "critic_lr": 1e9,
                "actor_lr": 1e9,
                "num_steps": 50,
                "total_steps": 400,
                "learning_starts": 100,
                "batch_size": 32,
                "buffer_size": 400,
            }
        ),
        r"diverged",
    ),
    (
        "divergence: TD3+BC lr 1e9",
        lambda: offline(
            "td3_bc",
            {
                "actor_lr": 1e9,
                "critic_lr": 1e9,
                "total_steps": 400,
                "eval_every": 100,
                "eval_episodes": 1,
            },
        ),
        r"diverged",
    ),
    ("divergence: diffusion lr 1e9", lambda: diffusion(1e9), r"diffusion training diverged"),
    *(
        (
            f"action: {name} discrete {a}",
            lambda name=name, a=a: step_with(name, jnp.int32(a)),
            rf"discrete action {a} is outside",
        )
        for name in ("GoalSequence", "MemorySequence", "MultiSkill", "gymnax:CartPole-v1")
        for a in (7, -1)
    ),
    (
        "action: HalfCheetah 100",
        lambda: step_with("HalfCheetah", jnp.full(6, 100.0)),
        "count:clipped_actions",
    ),
    (
        "action: HalfCheetah NaN",
        lambda: step_with("HalfCheetah", jnp.full(6, jnp.nan)),
        r"not finite",
    ),
    (
        "action: HalfCheetah wrong size",
        lambda: step_with("HalfCheetah", jnp.zeros(5)),
        r"shape|size",
    ),
    (
        "data: actions 100x outside the bounds",
        lambda: offline("iql", {}, pendulum_data()._replace(action=pendulum_data().action * 100)),
        r"far outside the env's bounds",
    ),
    (
        "data: NaN rewards given directly",
        lambda: offline(
            "td3_bc", {}, pendulum_data()._replace(reward=np.full(400, np.nan, np.float32))
        ),
        r"NaN or inf",
    ),
    (
        "data: wrong observation size",
        lambda: offline("iql", {}, pendulum_data()._replace(obs=np.zeros((400, 2), np.float32))),
        r"obs has shape",
    ),
    (
        "data: empty",
        lambda: offline("iql", {}, jax.tree.map(lambda x: x[:0], pendulum_data())),
        r"non-empty|empty",
    ),
    (
        "data: foreign Minari dataset without env_name",
        lambda: dataset_roundtrip(foreign_dataset),
        r"env_name|--env",
    ),
    ("sbd: action model on zero trajectories", lambda: action_model(demos(0, 8)), r"empty|no "),
    (
        "sbd: discover on one-step trajectories",
        lambda: discover(demos(6, 1)),
        r"at least 4 steps",
    ),
    ("sbd: discover on no trajectories", lambda: discover(demos(0, 8)), r"0 trajectories"),
    ("sbd: action out of range", lambda: action_model(demos(4, 8, action_max=9)), r"outside|range"),
    (
        "checkpoint: config record deleted",
        lambda: dataset_roundtrip(checkpoint_of_another_config),
        r"config",
    ),
    ("checkpoint: corrupt", lambda: dataset_roundtrip(corrupt_checkpoint), r"step 1|delete"),
    ("folder: a second process", lambda: dataset_roundtrip(second_process), r"FolderBusy"),
]


@dataclasses.dataclass
class Args:
    only: str = ""  # run the cases whose name contains this
    out: str = "results/benchmarks/bad_inputs.json"


def outcome(fn: Callable[[], object], expect: str) -> tuple[str, str]:
    """(named | counted | opaque | silent, what was said)."""
    kind = expect.split(":")[0] if expect.startswith(("warn:", "count:")) else ""
    pattern = expect.split(":", 1)[1] if kind else expect
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except Exception as err:  # the point: sort every error
            said = f"{type(err).__name__}: {err}".strip()
            ok = not kind and re.search(pattern, said, re.S)
            return ("named" if ok else "opaque"), said
    if kind == "count" and isinstance(result, dict) and float(np.sum(result[pattern])) > 0:
        return "counted", f"{pattern} = {float(np.sum(result[pattern])):g}"
    said = " | ".join(str(w.message) for w in caught if "Deprecat" not in type(w.message).__name__)
    if kind == "warn" and re.search(pattern, said):
        return "named", f"warning: {said}"
    return "silent", said


def main(args: Args) -> dict:
    rows = []
    for name, fn, expect in CASES:
        if args.only and args.only not in name:
            continue
        kind, said = outcome(fn, expect)
        rows.append({"case": name, "outcome": kind, "said": said})
        print(f"{kind:8s} {name:48s} {said.splitlines()[0][:150] if said else ''}", flush=True)
    totals = {
        k: sum(r["outcome"] == k for r in rows) for k in ("named", "counted", "opaque", "silent")
    }
    print(json.dumps(totals))
    write_json(args.out, {"totals": totals, "cases": rows})
    if totals["opaque"] or totals["silent"]:
        raise SystemExit(1)
    return totals


if __name__ == "__main__":
    main(tyro.cli(Args))
