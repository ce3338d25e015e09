"""PSEC under continual policy shift on HalfCheetah: a diffusion base, LoRA skills, composition.

Behaviours are HalfCheetah task params (the same physics, other rewards). SAC experts (trained
here once, or loaded from ``--experts``) act out the data: ``base_episodes`` episodes of running
forward for the base policy; ``skill_episodes`` of running backward and of jumping for two LoRA
skills; ``skill_episodes`` of the target, running backward while jumping, for the arms that
learn it. Every arm is scored on the target's reward: training from scratch on the target
episodes, full fine-tuning of the base on them, a LoRA skill on them (no composition), and the
backward and jump skills composed on them by PSEC (context-aware alpha(s)), fixed weights in
parameter space, noise space (NSEC) and action space (ASEC); and PSEC with skills of each rank
in ``--ranks``. Each stage runs all seeds in one vmapped program; seeds share the data.

    python -m experiments.psec                      # CPU scale, see the README for the time
    python -m experiments.psec --seeds 3 --ranks 8 --help
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from agents.core import batched, export_policy, load_policy
from agents.diffusion_policy import DiffusionPolicyConfig, make_diffusion_bc
from agents.replay.datasets import collect
from agents.sac import SACConfig, make_sac
from experiments.plots import plot_intervals
from experiments.runner import RunFolder, fmt_ci, iqm_ci, run_chunked
from experiments.study import Study, StudyArgs, config_dict, named_key
from skills.compose import ComposeConfig, make_composition
from skills.library import SkillLibrary, skill_agent

ENV = "HalfCheetah"
BEHAVIOURS: dict[str, dict[str, float]] = {
    "forward": {"direction": 1.0},
    "backward": {"direction": -1.0},
    "jump": {"target_velocity": 0.0, "jump_weight": 10.0},  # -|v_x| + 10 * root height
    "target": {"direction": -1.0, "jump_weight": 10.0},  # backward progress + 10 * height
}
SKILLS = ("backward", "jump")
MIXES = {"PSEC": "context", "PSEC, fixed weights": "param", "NSEC": "noise", "ASEC": "action"}


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/psec"
    experts: str = "results/psec/experts"  # SAC expert run folders, one per behaviour
    sac: SACConfig = dataclasses.field(
        default_factory=lambda: SACConfig(
            total_steps=30_000, learning_starts=5_000, buffer_size=30_000
        )
    )
    episode_steps: int = 1000
    base_episodes: int = 20  # forward-running episodes for the base policy
    skill_episodes: int = 10  # episodes per new skill and of the target (the paper: 10)
    base: DiffusionPolicyConfig = dataclasses.field(
        default_factory=lambda: DiffusionPolicyConfig(
            width=128, total_steps=5_000, eval_every=5_000, eval_episodes=3
        )
    )
    skill: DiffusionPolicyConfig = dataclasses.field(
        default_factory=lambda: DiffusionPolicyConfig(
            width=128, rank=8, total_steps=2_000, eval_every=2_000, eval_episodes=3
        )
    )
    compose: ComposeConfig = dataclasses.field(
        default_factory=lambda: ComposeConfig(total_steps=1_000, eval_every=1_000, eval_episodes=3)
    )
    ranks: tuple[int, ...] = (4, 8, 16, 32)  # PSEC's rank ablation (skills retrained per rank)


def experts(args: Args) -> dict[str, tuple[Any, Any]]:
    """{behaviour: (policy, params)} of the SAC experts: loaded, or trained (all missing ones in
    one vmapped program over their task params) and exported."""
    root = Path(args.experts)
    missing = [n for n in BEHAVIOURS if not (root / n / "policy").exists()]
    if missing:
        env, default = envs.make(ENV, backend="native", max_steps_in_episode=args.episode_steps)
        tasks = [default.replace(**BEHAVIOURS[n]) for n in missing]
        stacked = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *tasks)
        sac = batched(lambda task: make_sac(args.sac, env, task), stacked)
        config = {"experiment": "psec/experts", "behaviours": missing, "seed": args.seed}
        folder = RunFolder(root / "training", {**config, "sac": config_dict(args.sac)})
        key = named_key(args.seed, "experts", *missing)
        state, _, _ = run_chunked(sac, key, 1, folder, 5, args.progress)
        params = sac.policy_params(jax.tree.map(lambda x: x[0], state))  # seed 0: [B, ...]
        for i, name in enumerate(missing):
            meta = {"env": ENV, "env_kwargs": BEHAVIOURS[name], "env_steps": args.sac.total_steps}
            one = jax.tree.map(lambda x, i=i: x[i], params)
            export_policy(root / name / "policy", sac.policy, one, meta)
    return {n: load_policy(root / n / "policy")[:2] for n in BEHAVIOURS}


def demonstrations(args: Args, study: Study, name: str, expert: Any, episodes: int) -> Any:
    """``episodes`` episodes of ``expert`` (sampled actions) on ``name``: transitions [N]."""
    policy, params = expert
    env, env_params = envs.make(
        ENV, backend="native", max_steps_in_episode=args.episode_steps, **BEHAVIOURS[name]
    )
    act = lambda obs, key: policy.act(params, (), obs, key, False)[1]
    run = jax.jit(lambda key: collect(key, env, env_params, act, args.episode_steps, episodes))
    data = run(study.key("demonstrations", name))  # [T, E]
    return jax.tree.map(lambda x: np.asarray(x).swapaxes(0, 1).reshape(-1, *x.shape[2:]), data)


def main(args: Args) -> dict:
    study = Study("psec", args, behaviours=BEHAVIOURS)
    env, default = envs.make(ENV, backend="native", max_steps_in_episode=args.episode_steps)
    task = lambda name: default.replace(**BEHAVIOURS[name])
    episodes = {n: args.skill_episodes for n in BEHAVIOURS} | {"forward": args.base_episodes}
    actors = experts(args)
    data = {n: demonstrations(args, study, n, actors[n], episodes[n]) for n in BEHAVIOURS}
    per_seed = lambda fn, *xs: jax.jit(jax.vmap(fn))(*xs)
    final = lambda metrics: np.asarray(metrics["return"])[:, -1]  # [S]: the last evaluation

    # 1. the base: diffusion BC on forward running
    base_agent = make_diffusion_bc(args.base, data["forward"], env, task("forward"))
    base_state, base_metrics = per_seed(base_agent.train, study.seed_keys("base"))
    bases = jax.vmap(base_agent.policy_params)(base_state)["net"]
    spec = base_agent.policy.spec
    scores = {"base on forward": final(base_metrics)}

    # 2. skills (rank r) from a few episodes each, on every seed's frozen base
    def skills(rank: int) -> tuple[dict, dict]:
        config = args.skill.replace(rank=rank)

        def learn(name):
            def one(base, key):
                agent = skill_agent(
                    SkillLibrary(spec, base), name, data[name], config, env, task(name)
                )
                state, metrics = agent.train(key)
                return agent.policy_params(state)["adapters"], metrics

            return per_seed(one, bases, study.seed_keys("skill", name, rank))

        trained = {name: learn(name) for name in SKILLS}
        adapters = {n: jax.tree.map(lambda x: x[:, 0], a) for n, (a, _) in trained.items()}
        return adapters, {n: final(m) for n, (_, m) in trained.items()}

    # 3. the target: composition arms on every seed's library, and the baselines
    def compose(adapters: dict, mix: str, name: str) -> np.ndarray:
        def one(base, skill_adapters, key):
            library = SkillLibrary(spec, base, skill_adapters, {n: {} for n in SKILLS})
            agent = make_composition(
                args.compose, library, SKILLS, data["target"], env, task("target"), mix
            )
            return agent.train(key)[1]

        return final(per_seed(one, bases, adapters, study.seed_keys("compose", name)))

    adapters, skill_scores = skills(args.skill.rank)
    scores |= {f"{n} skill on {n}": s for n, s in skill_scores.items()}
    target = {name: compose(adapters, mix, name) for name, mix in MIXES.items()}
    scratch = make_diffusion_bc(args.skill.replace(rank=0), data["target"], env, task("target"))
    target["scratch"] = final(per_seed(scratch.train, study.seed_keys("scratch"))[1])

    def tuned(rank: int, name: str) -> np.ndarray:
        config = args.skill.replace(rank=rank)

        def one(base, key):
            if rank:
                agent = skill_agent(
                    SkillLibrary(spec, base), "target", data["target"], config, env, task("target")
                )
            else:
                agent = make_diffusion_bc(
                    config, data["target"], env, task("target"), base=base, units=spec["units"]
                )
            return agent.train(key)[1]

        return final(per_seed(one, bases, study.seed_keys(name)))

    target["full fine-tuning"] = tuned(0, "fine-tune")
    target["LoRA on the target (no composition)"] = tuned(args.skill.rank, "lora-target")
    for rank in args.ranks:
        if rank != args.skill.rank:
            target[f"PSEC, rank {rank}"] = compose(skills(rank)[0], "context", f"rank {rank}")
    target_expert = float(np.mean(data["target"].reward) * args.episode_steps)
    results = {
        "episodes": episodes,
        "target_expert_return": target_expert,
        "library": {k: iqm_ci(v) for k, v in scores.items()},
        "target": {k: iqm_ci(v) for k, v in target.items()},
        "per_seed": {"library": scores, "target": target},
    }
    plot_intervals(
        study.path / "target_returns.png", target, "return on the target (backward jump)"
    )
    return study.finish(results, _summary(args, results))


def _summary(args: Args, r: dict) -> str:
    lines = [
        f"# PSEC on HalfCheetah, continual policy shift ({args.seeds} seeds, IQM [95% CI])\n",
        f"Base: {args.base_episodes} forward episodes; skills and target: {args.skill_episodes} "
        f"episodes each of {args.episode_steps} steps. Target expert's return: "
        f"{r['target_expert_return']:.0f}.\n",
        "| library | return on its own task |\n|---|---|",
        *(f"| {k} | {fmt_ci(v)} |" for k, v in r["library"].items()),
        "\n| arm | return on the target |\n|---|---|",
        *(f"| {k} | {fmt_ci(v)} |" for k, v in r["target"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(tyro.cli(Args))
