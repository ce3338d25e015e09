"""Every study's real CLI end to end with tiny arguments, into a temporary folder.

Each test runs ``python -m experiments.<name> ...`` in a fresh process whose XLA skips its
expensive optimisation passes (compiling dominates tiny runs; the numbers are not the point),
then checks the study wrote ``results.json`` and ``summary.md`` and that every number in the
results is finite (NaN would mean a stage silently produced nothing). Every study module with a
``main`` has a test here, and the import-linter contract lists it (checked below).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pkgutil
import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest
from fresh_process import ROOT, run_module
from PIL import Image

import experiments
from envs.platform import ISA_FLAGS

SCAFFOLD = {"runner", "study", "plots", "loggers"}


def check_outputs(out: Path, allow_nan: tuple[str, ...] = ()) -> dict:
    """``out`` holds results.json and summary.md; every number in the results is finite,
    except under keys named in ``allow_nan``."""
    assert (out / "summary.md").read_text().strip()
    results = json.loads((out / "results.json").read_text())

    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                if k not in allow_nan:
                    walk(v, f"{path}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif isinstance(x, float):
            assert math.isfinite(x), f"{path} = {x}"
        elif x is None:
            raise AssertionError(f"{path} is null (NaN or missing)")

    walk(results, "results")
    assert results["machine"]["jax"] == jax.__version__  # what the numbers came from
    return results


def run_study(name: str, out: Path, *argv: str) -> dict:
    """``python -m experiments.<name> *argv --out out --no-progress``; its checked results."""
    run_module(f"experiments.{name}", [*argv, "--out", str(out), "--no-progress"])
    return check_outputs(out)


def studies() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules(experiments.__path__)
        if m.name not in SCAFFOLD
        and "def main" in (ROOT / "experiments" / f"{m.name}.py").read_text()
    )


def test_every_study_has_a_smoke_test_and_an_independence_contract():
    text = Path(__file__).read_text()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    independent = next(c["modules"] for c in contracts if c["type"] == "independence")
    for name in studies():
        assert f"def test_{name}(" in text, f"experiments/{name}.py has no smoke test here"
        assert f"experiments.{name}" in independent, f"experiments.{name} is not in the contract"


def test_ppo(tmp_path):
    ppo = ("--ppo.num-envs", "4", "--ppo.num-steps", "16", "--ppo.total-steps", "192")
    run_study(
        "ppo", tmp_path, "--seeds", "2", *ppo, "--ppo.num-minibatches", "2", "--eval-envs", "4"
    )
    assert (tmp_path / "policy" / "policy.json").exists()


def test_quickstart(tmp_path):
    args = ("--seeds", "2", "--gridworld-steps", "4096", "--memory-seeds", "2")
    results = run_study(
        "quickstart", tmp_path, *args, "--memory-steps", "1024", "--eval-episodes", "4",
        "--video", "6",
    )  # fmt: skip
    assert set(results) >= {"multiskill", "expert", "recurrent", "feedforward"}
    for run in ("multiskill_ppo", "memory_recurrent", "memory_feedforward"):
        assert (tmp_path / run / "policy" / "policy.json").exists()
        with Image.open(tmp_path / run / "policy.gif") as gif:  # --video 6: 7 frames
            assert gif.n_frames == 7 and gif.size[0] == 240


def test_offline(tmp_path, dataset_root):
    from agents.core import load_policy

    argv = ["--seeds", "2", "--algos", "iql", "--tasks", "halfcheetah", "--levels", "medium"]
    argv += ["--total-steps", "200", "--eval-every", "100", "--eval-episodes", "2"]
    argv += ["--iql.hidden", "16", "--iql.batch-size", "32", "--root", str(dataset_root)]
    # TD3+BC goes through the same code (and would add about 45 CPU-s)
    results = run_study("offline", tmp_path, *argv)
    assert [(r["algo"], r["corl"]) for r in results["runs"]] == [("iql", 48.3)]
    assert "| IQL | halfcheetah-medium |" in (tmp_path / "results.md").read_text()
    policy, _, meta = load_policy(tmp_path / "iql" / "halfcheetah-medium" / "policy")
    assert meta["dataset"] == "skill-agents/halfcheetah-medium-v0" and policy.spec["hidden"] == [16]
    assert run_study("offline", tmp_path, *argv)["runs"] == results["runs"]  # read, not rerun


def test_make_datasets(tmp_path):
    """A real tiny SAC on HalfCheetah (300 env steps, 50-step episodes) makes every level,
    exports the medium and expert policies, and a second call skips the finished task."""
    from agents.core import load_policy
    from agents.replay.datasets import load_dataset
    from experiments.make_datasets import LEVELS

    root = tmp_path / "datasets"
    argv = ["--tasks", "halfcheetah", "--snapshot-every", "100", "--dataset-steps", "100"]
    argv += ["--env-kwargs", '{"backend": "native", "max_steps_in_episode": 50}']
    argv += ["--sac.num-steps", "50", "--sac.total-steps", "300", "--sac.learning-starts", "100"]
    argv += ["--sac.batch-size", "32", "--sac.buffer-size", "300", "--sac.hidden", "16", "16"]
    argv += ["--collect-envs", "2", "--root", str(root)]
    results = run_study("make_datasets", tmp_path / "out", *argv)["halfcheetah"]
    for level in LEVELS:
        _dat, meta = load_dataset(f"skill-agents/halfcheetah-{level}-v0", root)
        assert meta["level"] == level and meta["ref_max_score"] == results["expert_return"]
    assert results["levels"]["medium-replay"]["transitions"] == results["medium_env_steps"]
    _, _, meta = load_policy(tmp_path / "out" / "halfcheetah" / "policies" / "expert")
    assert meta["env_kwargs"]["max_steps_in_episode"] == 50
    assert run_study("make_datasets", tmp_path / "out", *argv)["halfcheetah"] == results  # skipped


def test_make_datasets_args_are_checked():
    import pytest

    from agents.sac import SACConfig
    from experiments.make_datasets import Args

    for overrides, match in [
        ({"tasks": ("ant",)}, "unknown task"),
        ({"sac": SACConfig(total_steps=20_000, buffer_size=10_000)}, "must never wrap"),
        ({"snapshot_every": 1_500}, "snapshot_every=1500 must be a multiple"),
        ({"eval_episodes": 5}, "need >= 10"),
        ({"dataset_steps": 1_005}, "multiple of collect_envs=10"),
        ({"seeds": 2}, "one SAC run makes a task's datasets"),
    ]:
        with pytest.raises(ValueError, match=match):
            Args(**overrides).validate()


def test_medium_is_the_closest_snapshot_on_the_way_up():
    import numpy as np

    from agents.replay.levels import medium_snapshot

    # expert 1500 -> target 500; the late dip to 495 is not a medium policy
    evals = np.array([188, 325, 453, 871, 439, 2432, 495, 1500.0])
    assert medium_snapshot(evals, 1500.0) == 2
    assert medium_snapshot(np.array([-60, 1100, 2000, 6000.0]), 6000.0) == 2
    assert medium_snapshot(np.array([900, 100, 520, 1500.0]), 1500.0) == 0


def test_synther(tmp_path, dataset_root):
    """Quality, offline (IQL on subset / upsampled / full) and online (SynthER, SAC at its UTD
    and at UTD 1 on Pendulum with 50-step episodes) with an untrained tiny diffusion model."""
    # untrained, so a small sigma_max keeps its samples (actions too) near the data
    tiny = {"width": 16, "num-blocks": 1, "embed-dim": 16, "total-steps": 20, "batch-size": 32}
    tiny |= {"num-sample-steps": 2, "sigma-max": 0.2, "s-churn": 0.0}
    sac = {"total-steps": 250, "learning-starts": 100, "utd": 2, "batch-size": 32}
    sac |= {"buffer-size": 250, "hidden": 16}
    online = {"retrain-every": 50, "num-synthetic": 64, "sample-chunk": 32}
    flags = lambda prefix, d: [x for k, v in d.items() for x in (f"--{prefix}{k}", str(v))]
    argv = ["--seeds", "2", "--dataset", "skill-agents/halfcheetah-medium-replay-v0"]
    argv += ["--root", str(dataset_root), "--subset-fraction", "0.5", "--num-synthetic", "400"]
    argv += ["--quality-samples", "100", "--offline-steps", "20", "--eval-every", "10"]
    argv += ["--eval-episodes", "2", "--online-env", "gymnax:Pendulum-v1"]
    argv += ["--online-env-kwargs", '{"max_steps_in_episode": 50}', *flags("diffusion.", tiny)]
    argv += flags("online.diffusion.", tiny) + flags("online.sac.", sac) + flags("online.", online)
    results = run_study("synther", tmp_path, *argv)
    assert set(results["offline"]) == {"subset", "upsampled subset", "full"}
    assert set(results["online"]["arms"]) == {"SynthER UTD 2", "SAC UTD 2", "SAC UTD 1"}
    for plot in ("quality_moments", "offline_scores", "online_curves"):
        assert (tmp_path / f"{plot}.png").exists()
    assert (tmp_path / "online" / "SynthER_UTD_2" / "policy" / "policy.json").exists()


# a tiny recurrent PPO and Memory Sequence task for the cultural studies
TINY_CULTURAL = ["--seeds", "2", "--ppo.num-envs", "2", "--ppo.num-steps", "8"]
TINY_CULTURAL += ["--ppo.total-steps", "32", "--ppo.update-epochs", "1", "--ppo.num-minibatches"]
TINY_CULTURAL += ["1", "--ppo.hidden", "8", "--ppo.embed", "8", "--ppo.gru-hidden", "8"]
TINY_CULTURAL += ["--task.num-symbols", "3", "--task.seq-len", "4"]


def test_cultural_in_context(tmp_path):
    argv = ["--num-trials", "2", "--generations", "2", "--population", "2", "--tasks", "2"]
    r = run_study(
        "cultural_in_context", tmp_path, "memory", *TINY_CULTURAL, *argv, "--demo-from", "last"
    )
    # 2 trials x 2 generations: both RL^2 baselines (2 and 4 trials) reported, neither hidden
    assert r["rl2_trained_trials"] == {"rl2": 2, "rl2_long": 4}
    assert set(r["rl2_last_trial"]) == set(r["per_seed"]) - {"generation_last_trial"}
    summary = (tmp_path / "summary.md").read_text()
    assert "RL^2 trained on 2 trials" in summary and "RL^2 trained on 4 trials" in summary
    assert (tmp_path / "social" / "policy" / "policy.json").exists()
    assert len((tmp_path / "generations_last" / "metrics.jsonl").read_text().splitlines()) == 2


def test_cultural_in_weights(tmp_path):
    argv = ["--generations", "2", "--num-demos", "2", "--eval-episodes", "2"]
    run_study("cultural_in_weights", tmp_path, "memory", *TINY_CULTURAL, *argv)
    assert (tmp_path / "generations" / "policy" / "policy.json").exists()
    assert len((tmp_path / "single_lifetime" / "metrics.jsonl").read_text().splitlines()) == 2


def test_sbd(tmp_path):
    room = {"height": 7, "width": 7, "num_objects": 3, "min_skill_len": 2, "max_skill_len": 4}
    argv = ["--seeds", "2", "--env-kwargs", json.dumps({**room, "max_steps_in_episode": 24})]
    argv += ["--num-demos", "8", "--eval-demos", "8", "--model.embed", "8", "--model.gru-hidden"]
    argv += ["8", "--model.head", "8", "--model.total-steps", "4", "--model.batch-size", "4"]
    argv += ["--gaps", "0.5", "0.75", "--fixed-lengths", "2", "4", "--random-rates", "0.1"]
    argv += ["--policy.hidden", "8", "--policy.total-steps", "4", "--policy.batch-size", "8"]
    run_study("sbd", tmp_path, *argv, "--eval-episodes", "2", "--tour-steps", "8", "--video", "24")
    assert (tmp_path / "pr_curve.png").exists() and (tmp_path / "metrics.jsonl").exists()
    with Image.open(tmp_path / "segments.png") as strip:  # 24 frames framed by segment
        assert strip.size[0] > 20 * strip.size[1]
    assert (tmp_path / "demonstration.gif").exists()


def test_discover(tmp_path, dataset_root):
    """An .npz of toy demonstrations with true boundaries, then a Minari dataset (continuous)."""
    rng = np.random.default_rng(0)
    actions = np.repeat(rng.integers(0, 3, (6, 4)), 8, axis=1)  # 6 trajectories, 4 skills of 8
    obs = np.eye(3)[np.pad(actions[:, :-1], ((0, 0), (1, 0)))] + 0.05 * rng.normal(size=(6, 32, 3))
    true = np.zeros((6, 32), bool)
    true[:, 8::8] = actions[:, 8::8] != actions[:, 7:-1:8]
    np.savez(tmp_path / "demos.npz", obs=obs.astype(np.float32), actions=actions, boundaries=true)
    tiny = ["--model.embed", "8", "--model.gru-hidden", "8", "--model.head", "8"]
    tiny += ["--model.total-steps", "20", "--model.batch-size", "4"]
    r = run_study("discover", tmp_path / "npz", "--data", str(tmp_path / "demos.npz"), *tiny,
                  "--seeds", "2")  # fmt: skip
    assert r["gap_rule"] == "best F1 on 3 trajectories" and len(r["gap"]) == 2
    assert set(r["scores"]) == {"precision", "recall", "f1"}
    segments = json.loads((tmp_path / "npz" / "segments.json").read_text())
    assert len(segments) == 6 and all(s[0][0] == 0 and s[-1][1] == 32 for s in segments)
    assert (tmp_path / "npz" / "segments.png").exists()
    data = "minari:skill-agents/halfcheetah-medium-v0"
    r = run_study("discover", tmp_path / "minari", "--data", data, "--dataset-root",
                  str(dataset_root), "--length", "100", *tiny)  # fmt: skip
    assert r["gap_rule"].startswith("Otsu") and r["trajectories"] == 4 and r["steps"] == 100
    with np.load(tmp_path / "minari" / "discovery.npz") as f:
        assert f["boundary"].shape == (1, 4, 100) and f["boundary"][0, :, ::50].all()  # episodes


def test_sweep(tmp_path):
    """A PPO grid over a sweepable and a static field: 4 settings in 2 programs."""
    tiny = ["--ppo.num-envs", "4", "--ppo.num-steps", "16", "--ppo.total-steps", "128"]
    tiny += ["--ppo.num-minibatches", "2", "--seeds", "2"]
    argv = ["ppo", "--grid", "lr=1e-4,1e-3", "hidden=8,16x16", *tiny]
    r = run_study("sweep", tmp_path / "ppo", *argv)
    assert r["programs"] == 2 and len(r["settings"]) == 4
    assert all(len(s["per_seed"]) == 2 for s in r["settings"].values())
    for name in ("intervals.png", "profiles.png", "groups/0/metrics.jsonl", "groups/1/config.json"):
        assert (tmp_path / "ppo" / name).exists(), name


@pytest.mark.slow
def test_sweep_offline(tmp_path, dataset_root):
    """An offline learner's sweep on a Minari dataset (slow: the default suite's time)."""
    offline = ["--dataset-root", str(dataset_root), "--td3-bc.total-steps", "20"]
    offline += ["--td3-bc.eval-every", "10", "--td3-bc.eval-episodes", "1", "--td3-bc.hidden", "8"]
    offline += ["--td3-bc.batch-size", "8", "--seeds", "1"]
    r = run_study("sweep", tmp_path / "td3", "td3_bc", "--grid", "alpha=1,2.5", *offline)
    assert r["programs"] == 1 and len(r["settings"]) == 2
    tiny = ["--diffusion-bc.total-steps", "20", "--diffusion-bc.eval-every", "10"]
    tiny += ["--diffusion-bc.eval-episodes", "1", "--diffusion-bc.width", "8"]
    tiny += ["--diffusion-bc.batch-size", "8", "--seeds", "1", "--dataset-root", str(dataset_root)]
    r = run_study("sweep", tmp_path / "dbc", "diffusion_bc", "--grid", "lr=1e-4,1e-3", *tiny)
    assert r["metric"] == "return" and len(r["settings"]) == 2


def test_sweep_action_model(tmp_path):
    """A skill learner's sweep: SBD's action model on MultiSkill demonstrations, compared on
    its final NLL (lower is better: the summary lists the lowest first)."""
    tiny = ["--demos", "4", "--env-kwargs", '{"max_steps_in_episode": 24}', "--seeds", "2"]
    tiny += ["--action-model.total-steps", "20", "--action-model.batch-size", "2"]
    tiny += ["--action-model.embed", "8", "--action-model.gru-hidden", "8"]
    tiny += ["--action-model.head", "8"]
    r = run_study("sweep", tmp_path / "am", "action_model", "--grid", "lr=1e-4,3e-2", *tiny)
    assert r["metric"] == "loss" and r["lower_is_better"] and len(r["settings"]) == 2
    iqm = {n: s["iqm_ci"][0] for n, s in r["settings"].items()}
    assert iqm["lr=0.03"] < iqm["lr=0.0001"]  # 20 steps: the larger rate fits faster
    table = (tmp_path / "am" / "summary.md").read_text()
    assert table.index("lr=0.03") < table.index("lr=0.0001")


def every_config(obj):
    """``obj`` and every dataclass nested in it."""
    yield obj
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from every_config(getattr(obj, f.name))


def test_every_study_has_valid_cpu_and_paper_presets():
    """``--preset paper`` gives each study (and each subcommand) valid settings that differ
    from the CPU ones; flags after it override it; an unknown preset is refused by name."""
    import importlib

    from experiments.study import cli

    for name in studies():
        presets = importlib.import_module(f"experiments.{name}").PRESETS
        assert set(presets) == {"cpu", "paper"}, name
        commands = presets["cpu"] if isinstance(presets["cpu"], dict) else {"": None}
        for command in commands:
            sub = [command] if command else []
            cpu, paper = (cli(presets, ["--preset", p, *sub]) for p in ("cpu", "paper"))
            assert (cpu.preset, paper.preset) == ("cpu", "paper")
            for config in every_config(paper):
                if hasattr(config, "validate"):
                    config.validate()
            assert dataclasses.replace(paper, preset="cpu") != cpu, f"{name} {command}"
            assert cli(presets, [*sub, "--preset=paper", "--seeds", "3"]).seeds == 3
    presets = importlib.import_module("experiments.offline").PRESETS
    assert cli(presets, ["--preset", "paper"]).total_steps == 1_000_000
    with pytest.raises(SystemExit, match="'gpu' is not a preset of this study; choose one of cpu"):
        cli(presets, ["--preset", "gpu"])


def test_sweep_grid_errors_are_named():
    from agents.ppo import PPOConfig
    from experiments.sweep import parse_grid

    assert len(parse_grid(PPOConfig(), ("lr=1e-4,1e-3", "hidden=8,16x16", "anneal_lr=true"))) == 4
    with pytest.raises(ValueError, match="PPOConfig has no field 'learning_rate'"):
        parse_grid(PPOConfig(), ("learning_rate=1e-3",))
    with pytest.raises(ValueError, match="cannot read 'fast' as float"):
        parse_grid(PPOConfig(), ("lr=fast",))
    with pytest.raises(ValueError, match="write name=value1,value2"):
        parse_grid(PPOConfig(), ("lr",))


def test_sbd_mujoco(tmp_path):
    """Trains the forward behaviour's tiny SAC policy itself (the training path); backward and
    jump are tiny untrained SAC actors exported beforehand (the loading path): one SAC compile
    instead of three."""
    import jax
    import jax.numpy as jnp

    import envs
    from agents.core import export_policy
    from agents.sac import SquashedGaussianActor, sac_policy

    env, params = envs.make("HalfCheetah", backend="native")
    space, obs_dim = env.action_space(params), env.observation_space(params).shape[0]
    for i, name in enumerate(("backward", "jump")):
        weights = SquashedGaussianActor(6, (8, 8)).init(jax.random.key(i), jnp.zeros(obs_dim))
        policy = sac_policy(space.low, space.high, (8, 8))
        export_policy(tmp_path / "policies" / name / "policy", policy, weights, {"env_steps": 0})
    argv = ["--policies", str(tmp_path / "policies"), "--forward-policy", "", "--seeds", "2"]
    argv += ["--sac.num-steps", "50", "--sac.total-steps", "200", "--sac.learning-starts", "100"]
    argv += ["--sac.batch-size", "32", "--sac.buffer-size", "200", "--sac.hidden", "8", "8"]
    argv += ["--policy-eval-episodes", "1", "--num-demos", "2", "--demo-steps", "80"]
    argv += ["--min-segment", "25", "--max-segment", "40", "--model.embed", "8"]
    argv += ["--model.gru-hidden", "8", "--model.head", "8", "--model.total-steps", "4"]
    argv += ["--model.batch-size", "2", "--train-window", "40", "--gaps", "4.0", "12.0"]
    argv += ["--fixed-lengths", "5", "10", "--random-rates", "0.1"]
    run_study("sbd_mujoco", tmp_path / "study", *argv, "--video", "4")
    assert (tmp_path / "policies" / "forward" / "policy" / "policy.json").exists()
    try:  # --video: the trained policy's GIF and the example's segment strip, where GL exists
        env._renderer()
    except RuntimeError:
        return
    assert (tmp_path / "policies" / "forward" / "policy.gif").exists()
    assert (tmp_path / "study" / "segments.png").exists()


def psec_argv(tmp_path: Path, **evaluation: int) -> list[str]:
    """Tiny experts, base, skills and compositions for the PSEC studies (``eval_episodes``:
    their evaluations' episodes)."""
    flags = lambda prefix, d: [
        x for k, v in d.items() for x in (f"--{prefix}{k.replace('_', '-')}", str(v))
    ]
    tiny = {"width": 16, "num-blocks": 1, "time-dim": 4, "batch-size": 16, **evaluation}
    tiny |= {"total-steps": 4, "eval-every": 4}
    argv = ["--experts", str(tmp_path / "experts"), "--seeds", "2", "--episode-steps", "30"]
    argv += ["--sac.num-steps", "30", "--sac.total-steps", "120", "--sac.learning-starts", "60"]
    argv += ["--sac.batch-size", "16", "--sac.buffer-size", "120", "--sac.hidden", "8", "8"]
    argv += flags("base.", tiny) + flags("skill.", tiny | {"rank": 2})
    return argv + flags(
        "compose.", {"total-steps": 2, "eval-every": 2, "batch-size": 16, **evaluation}
    )


def test_psec(tmp_path):
    """Trains the forward and backward experts' tiny SACs in one program (the training path);
    the other experts are tiny untrained SAC actors exported beforehand (the loading path)."""
    import jax
    import jax.numpy as jnp

    import envs
    from agents.core import export_policy
    from agents.sac import SquashedGaussianActor, sac_policy
    from experiments.psec import SHIFTS

    env, params = envs.make("HalfCheetah", backend="native")
    space, obs_dim = env.action_space(params), env.observation_space(params).shape[0]
    for i, name in enumerate(("jump", "backward jump")):
        weights = SquashedGaussianActor(6, (8, 8)).init(jax.random.key(i), jnp.zeros(obs_dim))
        policy = sac_policy(space.low, space.high, (8, 8))
        meta = {"env": "HalfCheetah", "env_kwargs": SHIFTS["policy"][name], "env_steps": 0}
        export_policy(tmp_path / "experts" / name / "policy", policy, weights, meta)
    argv = psec_argv(tmp_path, eval_episodes=1) + ["--base-episodes", "2", "--skill-episodes", "2"]
    argv += ["--ranks", "2"]
    results = run_study("psec", tmp_path / "study", *argv)
    arms = {"PSEC", "NSEC", "ASEC", "MLP-PSEC", "scratch", "full fine-tuning", "jump skill alone"}
    arms.add("PSEC, anchored at the best skill")
    assert arms <= set(results["target"])
    assert sum(results["anchored_starts"].values()) == 2  # seeds, each started at one skill
    for name in ("forward", "backward"):
        assert (tmp_path / "experts" / name / "policy" / "policy.json").exists()
    assert (tmp_path / "study" / "target_returns.png").exists()


def test_psec_refuses_an_unknown_arm(tmp_path):
    from experiments.psec import Args, main

    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['PSCE'\]; choose from"):
        main(Args(out=str(tmp_path), arms=("PSEC", "PSCE")))
    assert not any(tmp_path.iterdir())  # refused before the run folder was made


def test_psec_dynamics_shift_tasks_are_valid_env_params():
    """``--shift dynamics`` runs the same main as the policy shift above; its tasks must be
    valid HalfCheetah params, distinct, with a target no skill saw."""
    import envs
    from experiments.psec import ENV, SHIFTS

    for behaviours in SHIFTS.values():
        tasks = [envs.make(ENV, **kwargs)[1] for kwargs in behaviours.values()]
        assert len({str(t) for t in tasks}) == len(tasks) == 4


def test_psec_safe(tmp_path):
    """Tiny SAC experts trained in one program; a velocity limit low enough that the data
    has both safe and unsafe episodes."""
    argv = psec_argv(tmp_path)
    argv += ["--velocity-limit", "0.3", "--cost-limit", "12", "--safe-velocity", "0.1"]
    argv += ["--noise", "0.0", "1.0", "--episodes", "2", "--eval-episodes", "1"]
    argv += ["--iql.total-steps", "4", "--iql.eval-every", "4", "--iql.hidden", "8", "8"]
    results = run_study("psec_safe", tmp_path / "study", *argv)
    assert set(results["arms"]) == {
        "BC", "PSEC", "NSEC", "ASEC", "reward skill alone", "cost skill alone"
    }  # fmt: skip
    assert (tmp_path / "study" / "normalized_cost.png").exists()


def test_oer(tmp_path):
    """Tiny SAC runs make the five tasks' Minari datasets; two arms cover the transfer metrics
    (single-task is forward transfer's reference), OER's buffers and MMD check, and the
    buffer-size sweep."""
    argv = ["--datasets", str(tmp_path / "runs"), "--dataset-root", str(tmp_path / "minari")]
    argv += ["--seeds", "2", "--episode-steps", "30", "--dataset-steps", "200"]
    argv += ["--sac.num-steps", "30", "--sac.total-steps", "120", "--sac.learning-starts", "60"]
    argv += ["--sac.batch-size", "16", "--sac.buffer-size", "120", "--sac.hidden", "8", "8"]
    argv += ["--snapshot-every", "30", "--buffer-sizes", "10", "20", "--mmd-samples", "15"]
    argv += ["--continual.steps-per-task", "4", "--continual.batch-size", "16"]
    argv += ["--continual.hidden", "8", "8", "--continual.eval-episodes", "1"]
    argv += ["--continual.num-neighbours", "4", "--continual.dynamics.total-steps", "2"]
    argv += ["--continual.dynamics.hidden", "8", "--heads", "multi"]
    argv += ["--arms", "OER (MBES + DBC)", "single-task"]
    results = run_study("oer", tmp_path / "study", *argv)
    swept = [f"OER (MBES + DBC), multi-head, buffer {n}" for n in (10, 20)]
    assert set(results["summary"]) == {*swept, "single-task, multi-head"}
    assert set(results["buffers"]) == set(swept)
    assert np.shape(results["R"]["single-task, multi-head"]) == (5, 5)
    for plot in ("R.png", "buffer_average.png", "buffer_forgetting.png"):
        assert (tmp_path / "study" / plot).exists()
    assert len(list((tmp_path / "minari").rglob("metadata.json"))) == 5

    from agents.sac import SACConfig
    from envs.mujoco.variants import SEQUENCES
    from experiments.study import task_datasets

    sac = SACConfig(num_steps=30, total_steps=150, learning_starts=60, hidden=(8, 8))
    with pytest.raises(ValueError, match=r"made with sac=.*delete"):  # stored for other settings
        task_datasets(
            tmp_path / "runs", "cheetah-vel", *SEQUENCES["cheetah-vel"], "medium", sac, 200,
            30, 10, 30, dataset_root=tmp_path / "minari",
        )  # fmt: skip


def test_oer_sequences_are_valid_env_params():
    import envs
    from envs.mujoco.variants import SEQUENCES

    for env_name, tasks in SEQUENCES.values():
        params = [envs.make(env_name, **kwargs)[1] for kwargs in tasks.values()]
        assert len({str(p) for p in params}) == len(params) >= 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"env_kwargs": "{reveal_skill: true}"}, "--env-kwargs .* is not JSON"),
        ({"env_kwargs": "[1, 2]"}, "is a JSON list; give an object"),
        ({"env": "Hopper", "env_kwargs": '{"gravity_scale": "x"}'}, "must be a number"),
        ({"env": "Hopper", "env_kwargs": '{"gravity_scale": -1}'}, "gravity_scale must be"),
        ({"eval_envs": 0}, "--eval-envs 0"),
    ],
)
def test_bad_cli_input_is_named_before_anything_runs(tmp_path, flags, message):
    from experiments import ppo

    with pytest.raises(ValueError, match=message):
        ppo.main(ppo.Args(out=str(tmp_path / "run"), progress=False, **flags))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_truncated_budget_is_said():
    from agents.ppo import PPOConfig

    with pytest.warns(UserWarning, match="total_steps=100 .* 64 steps are trained; use 64 or 128"):
        PPOConfig(num_envs=4, num_steps=16, total_steps=100).validate()


def test_a_finished_study_returns_its_results_and_a_refused_one_changes_nothing(tmp_path):
    from experiments.study import Study, StudyArgs

    args = StudyArgs(out=str(tmp_path), seeds=2)
    study = Study("s", args)
    assert study.finished() is None
    study.finish({"score": 1.0}, "# s\n")
    stored = Study("s", args).finished()
    assert stored["score"] == 1.0
    machine = stored["machine"]  # XLA compiles for the host CPU: results name it
    assert machine["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    assert set(machine["cpu"]["isa"]) <= set(ISA_FLAGS) and machine["device_count"] >= 1
    assert Study("s", dataclasses.replace(args, overwrite=True)).finished() is None
    assert Study("s", dataclasses.replace(args, progress=False)).finished() is not None
    other = Study("s", dataclasses.replace(args, seeds=3))  # another config: runs, and until it
    assert other.finished() is None  # finishes the folder's config.json describes the old run
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == 2


def test_a_stopped_study_loads_its_finished_stages(tmp_path):
    """``Study.stage`` keeps a stage's output (PRNG keys included) in the run folder: a study
    started again loads it instead of running the stage; another config is refused."""
    import jax

    from agents.checkpoint import CheckpointError
    from experiments.study import Study, StudyArgs

    args = StudyArgs(out=str(tmp_path), seeds=2)
    train = lambda k: ({"w": jax.random.normal(k, (3,)), "key": k}, {"loss": jax.numpy.ones(4)})
    study = Study("s", args)
    first = study.stage(("train", 1), train, study.seed_keys("train"))
    again = Study("s", args).stage(("train", 1), lambda k: jax.tree.map(lambda x: x, train(k)),
                                   study.seed_keys("other"))  # fmt: skip
    np.testing.assert_array_equal(again[0]["w"], first[0]["w"])  # loaded, not recomputed
    assert jax.numpy.array_equal(jax.random.key_data(again[0]["key"]),
                                 jax.random.key_data(first[0]["key"]))  # fmt: skip
    assert (tmp_path / "stages" / "train-1").is_dir()
    returns = study.stage(("returns",), lambda k: jax.random.uniform(k, (2,)), study.seed_keys("r"))
    loaded = Study("s", args).stage(("returns",), lambda x: x * 0, returns)  # a bare array
    np.testing.assert_array_equal(loaded, returns)
    with pytest.raises(CheckpointError, match="seeds"):
        Study("s", dataclasses.replace(args, seeds=3)).stage(("train", 1), train,
                                                             study.seed_keys("train"))  # fmt: skip
    # an argument in ``selects`` (as if it only chose which stages run) is no part of a stage's
    # config: a run with another value of it loads the stages done
    picked = lambda seed: Study(
        "s", dataclasses.replace(args, out=str(tmp_path / "picked"), seed=seed), selects=("seed",)
    )
    done = picked(0).stage(("train", 1), train, study.seed_keys("train"))
    again = picked(1).stage(("train", 1), train, study.seed_keys("other"))
    np.testing.assert_array_equal(again[0]["w"], done[0]["w"])
