"""Hyperparameter sweeps as one command: a grid of settings x seeds, as few programs as possible.

    python -m experiments.sweep ppo --grid lr=1e-4,3e-4,1e-3 ent_coef=0,0.01 --seeds 16
    python -m experiments.sweep sac --env HalfCheetah --grid actor_lr=1e-4,3e-4 --seeds 4
    python -m experiments.sweep td3_bc --dataset skill-agents/hopper-medium-v0 --grid alpha=1,2.5,5
    python -m experiments.sweep diffusion_bc --grid lr=1e-4,3e-4 num_steps=5,10
    python -m experiments.sweep action_model --grid lr=1e-3,3e-3 gru_hidden=32,64

Agents: PPO and SAC on ``--env``; TD3+BC, IQL and the diffusion policy (PSEC's base learner)
on a Minari ``--dataset``; SBD's action model on ``--demos`` trajectories of MultiSkill's
scripted expert (``--env-kwargs`` its params), compared on its final NLL (lower is better).
The grid is the product of ``--grid name=v1,v2,...`` over fields of the agent's config (its
base values from ``--ppo.*``, ``--sac.*``, ``--td3-bc.*``, ``--iql.*``, ``--diffusion-bc.*``
or ``--action-model.*``; a tuple as ``64x64``). ``--preset cpu`` (the default) trains the
off-policy and offline learners for 50k steps; ``--preset paper`` for the published 1M.
Settings that differ only in sweepable fields (learning rates, coefficients, discounts: pytree
leaves) train in one program: ``agents.core.batched`` over the stacked configs, vmapped over
seeds, the seeds split over every device (``run_chunked``). Settings that change a static field
(network sizes, batch shapes) form separate groups, run one after another, each in its own
resumable run folder ``groups/<k>``. The whole sweep shows one progress bar, resumes after a
stop, and writes ``results.json`` and ``summary.md`` (per setting: the final ``--metric``,
its mean over the last 10% of updates, IQM and 95% CI over seeds), ``intervals.png`` (rliable
interval estimates) and ``profiles.png`` (performance profiles: the fraction of seeds above
each score).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Literal

import jax
import numpy as np
import tyro
from tqdm import tqdm

import envs
from agents.core import batched
from agents.diffusion_policy import DiffusionPolicyConfig, make_diffusion_bc, reference_config
from agents.hparams import require, stack_configs
from agents.iql import IQLConfig, make_iql
from agents.ppo import PPOConfig, make_ppo
from agents.replay import Transition
from agents.replay.datasets import load_dataset
from agents.sac import SACConfig, make_sac
from agents.td3_bc import TD3BCConfig, make_td3_bc
from envs.gridworlds.multi_skill import check_params, rollout_expert
from experiments.plots import plot_intervals, plot_profiles
from experiments.runner import final_score, iqm_ci, md_table, run_chunked
from experiments.study import Study, StudyArgs, cli, config_dict, named_key, parse_env_kwargs
from skills.action_model import ActionModelConfig, make_action_model

AGENTS = ("ppo", "sac", "td3_bc", "iql", "diffusion_bc", "action_model")
DEFAULT_ENV = {"ppo": "gymnax:CartPole-v1", "sac": "HalfCheetah", "action_model": "MultiSkill"}


@dataclasses.dataclass
class Args(StudyArgs):
    agent: tyro.conf.Positional[
        Literal["ppo", "sac", "td3_bc", "iql", "diffusion_bc", "action_model"]
    ] = "ppo"
    out: str = "results/sweep"
    seeds: int = 4
    grid: tuple[str, ...] = ()  # name=v1,v2,... over the agent's config fields
    env: str = ""  # ppo (default gymnax:CartPole-v1), sac (default HalfCheetah)
    env_kwargs: str = "{}"  # JSON overrides of the env's default params
    dataset: str = "skill-agents/halfcheetah-medium-v0"  # td3_bc, iql, diffusion_bc: Minari id
    dataset_root: str | None = None
    demos: int = 256  # action_model: expert trajectories (one episode each), shared by seeds
    metric: str = ""  # compared metric; default "return" ("loss" for action_model)
    updates_per_chunk: int = 0  # between checkpoints / refreshes (0: a twentieth of each group)
    on_divergence: Literal["stop", "exclude"] = "stop"  # exclude: a diverged seed, all settings
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    sac: SACConfig = dataclasses.field(
        default_factory=lambda: SACConfig(total_steps=50_000, buffer_size=50_000)
    )
    td3_bc: TD3BCConfig = dataclasses.field(default_factory=lambda: TD3BCConfig(total_steps=50_000))
    iql: IQLConfig = dataclasses.field(default_factory=lambda: IQLConfig(total_steps=50_000))
    diffusion_bc: DiffusionPolicyConfig = dataclasses.field(default_factory=DiffusionPolicyConfig)
    action_model: ActionModelConfig = dataclasses.field(default_factory=ActionModelConfig)

    @property
    def compared(self) -> str:
        """The metric the settings are compared on."""
        return self.metric or ("loss" if self.agent == "action_model" else "return")


def paper() -> Args:
    """The published budgets: SAC, TD3+BC and IQL for 1M steps (their config defaults);
    PSEC's base diffusion policy for 1M steps at batch 2048."""
    return Args(
        sac=SACConfig(),
        td3_bc=TD3BCConfig(),
        iql=IQLConfig(),
        diffusion_bc=reference_config(),
    )


PRESETS = {"cpu": Args, "paper": paper}


def parse_grid(base: Any, grid: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every combination of the ``name=v1,v2`` entries, values cast to the base field's type."""
    fields = {f.name: f for f in dataclasses.fields(base)}
    axes = []
    for entry in grid:
        name, sep, values = entry.partition("=")
        require(bool(sep and values), f"--grid {entry!r}: write name=value1,value2,...")
        require(
            name in fields,
            f"--grid {name}: {type(base).__name__} has no field {name!r}; its fields: "
            f"{sorted(fields)}",
        )
        axes.append([(name, _cast(getattr(base, name), v, name)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def _cast(default: Any, text: str, name: str) -> Any:
    try:
        if isinstance(default, bool):
            require(text.lower() in ("true", "false"), f"--grid {name}: {text!r} is not a bool")
            return text.lower() == "true"
        if isinstance(default, tuple):
            return tuple(int(x) for x in text.split("x"))
        return type(default)(text)
    except ValueError as err:
        raise ValueError(
            f"--grid {name}: cannot read {text!r} as {type(default).__name__}"
        ) from err


def static_key(config: Any) -> tuple:
    """The static (shape-fixing) fields of ``config``: settings that share them share a program."""
    return tuple(
        (f.name, getattr(config, f.name))
        for f in dataclasses.fields(config)
        if not f.metadata.get("pytree_node", True)
    )


def maker(args: Args):
    """(base config, make(config) -> Agent) for ``args.agent``."""
    base = getattr(args, args.agent)
    if args.agent in ("ppo", "sac"):
        env, env_params = envs.make(
            args.env or DEFAULT_ENV[args.agent], **parse_env_kwargs(args.env_kwargs)
        )
        learn = make_ppo if args.agent == "ppo" else make_sac
        return base, lambda c: learn(c, env, env_params)
    if args.agent == "action_model":
        demos, space = action_model_demos(args)
        return base, lambda c: make_action_model(c, space, demos)
    data, meta = load_dataset(args.dataset, args.dataset_root)
    env, env_params = envs.make(meta["env_name"], **(meta["env_kwargs"] or {}))
    refs = (meta["ref_min_score"], meta["ref_max_score"])
    learn = {"td3_bc": make_td3_bc, "iql": make_iql, "diffusion_bc": make_diffusion_bc}[args.agent]
    return base, lambda c: learn(c, data, env, env_params, ref_scores=refs)


def action_model_demos(args: Args) -> tuple[Transition, Any]:
    """``args.demos`` trajectories [N, T] of MultiSkill's scripted expert, and its action space."""
    name = args.env or DEFAULT_ENV["action_model"]
    require(name == "MultiSkill", f"--env {name}: the action model sweeps on MultiSkill's "
            "scripted demonstrations; leave --env out or give MultiSkill")  # fmt: skip
    env, params = envs.make(name, **parse_env_kwargs(args.env_kwargs))
    check_params(params)
    steps, keys = (
        int(params.max_steps_in_episode),
        jax.random.split(named_key(args.seed, "demos"), args.demos),
    )
    demos = jax.jit(jax.vmap(lambda k: rollout_expert(k, env, params, steps)))(keys)
    return Transition(*demos[:6]), env.action_space(params)


def main(args: Args) -> dict:
    study = Study("sweep", args)
    if (done := study.finished()) is not None:
        return done
    base, make = maker(args)
    settings = parse_grid(base, args.grid)
    configs = [base.replace(**s) for s in settings]
    for c in configs:
        c.validate()
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(static_key(c), []).append(i)
    agents = [batched(make, stack_configs([configs[i] for i in g])) for g in groups.values()]
    metric, lower = args.compared, "loss" in args.compared or "nll" in args.compared
    total = sum(a.num_updates * a.steps_per_update for a in agents)
    desc = f"sweep: {len(configs)} settings x {args.seeds} seeds, {agents[0].step_unit}/seed"
    bar = tqdm(total=total, unit="step", unit_scale=True, disable=not args.progress, desc=desc)
    scores: dict[int, np.ndarray] = {}
    walls = []
    for k, (members, agent) in enumerate(zip(groups.values(), agents)):
        folder = study.folder("groups", str(k), settings=[settings[i] for i in members])
        chunk = args.updates_per_chunk or max(1, -(-agent.num_updates // 20))
        _, metrics, timing = run_chunked(
            agent, study.key("group", k), args.seeds, folder, chunk,
            bar=bar, exclude_diverged=args.on_divergence == "exclude",
        )  # fmt: skip
        require(
            metric in metrics,
            f"--metric {metric}: the {args.agent} agent reports {sorted(metrics)}",
        )
        curves = metrics[metric]  # [S, updates, B]
        final = np.stack([final_score(curves[..., j]) for j in range(len(members))])  # [B, S]
        final[:, timing["diverged_seeds"]] = np.nan
        for j, i in enumerate(members):
            scores[i] = final[j]
        walls.append({"group": k, "settings": len(members), **timing})
    bar.close()
    names = [", ".join(f"{k}={v}" for k, v in s.items()) or "base" for s in settings]
    per_setting = {names[i]: scores[i] for i in range(len(configs))}
    kept = {n: v[np.isfinite(v)] for n, v in per_setting.items()}
    results = {
        "agent": args.agent,
        "metric": metric,
        "lower_is_better": lower,
        "grid": list(args.grid),
        "base": config_dict(base),
        "programs": len(groups),
        "settings": {
            n: {"setting": settings[i], "iqm_ci": iqm_ci(kept[n]), "per_seed": scores[i].tolist()}
            for i, n in enumerate(names)
        },
        "timing": walls,
    }
    plot_intervals(study.path / "intervals.png", kept, f"final {metric}")
    sign, label = (-1, f"final {metric}, negated (higher is better)") if lower else (1, None)
    profiles = {n: sign * v for n, v in kept.items()}
    plot_profiles(study.path / "profiles.png", profiles, label or f"final {metric}")
    return study.finish(results, _summary(args, results))


def _summary(args: Args, r: dict) -> str:
    sign = 1 if r["lower_is_better"] else -1
    rows = sorted(r["settings"].items(), key=lambda kv: sign * kv[1]["iqm_ci"][0])
    lines = [
        f"# {args.agent} sweep: {len(rows)} settings x {args.seeds} seeds in {r['programs']} "
        f"program(s)",
        "",
        f"Final {r['metric']} (mean over the last 10% of updates), IQM [95% CI] over seeds; "
        f"best first. Base config: {json.dumps(r['base'])}",
        "",
        md_table(["setting", "IQM [95% CI]"], [(name, s["iqm_ci"]) for name, s in rows]),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(cli(PRESETS))
