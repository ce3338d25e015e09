"""PSEC for safe offline RL: a reward skill and a cost skill composed under a velocity limit.

HalfCheetah with Safety-Gymnasium's velocity constraint: cost 1 on every step whose speed is
above 3.2096 m/s (``--velocity-limit``); an episode is safe when its cost is at most
``--cost-limit``. The data is mixed quality and generated here: episodes of a fast SAC expert
(forward running: high return, unsafe) and of a slow one (tracking ``--safe-velocity``: safe)
at each action-noise level in ``--noise``, all labelled with the forward-running reward and
the cost. On each seed: a diffusion BC base on all of it (the BC arm); a reward skill (LoRA,
IQL advantage weights of the reward) and a cost skill (LoRA, IQL advantage weights of minus
the cost) on all of it; then the two skills composed by PSEC (context-aware alpha(s)), NSEC
and ASEC, trained on the dataset's safe episodes. Scored as DSRL does: normalised return
``(R - R_min) / (R_max - R_min)`` over the dataset's episode returns and normalised cost
``cost / cost_limit`` (at most 1 is safe), over ``--eval-episodes`` greedy episodes per seed.

The reference's cost skill uses a Hamilton-Jacobi feasibility critic (FISOR); here it is IQL
on the negated cost, which ranks actions by discounted future cost the same way.

    python -m experiments.psec_safe                 # CPU scale, see the README for the time
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import envs
from agents.diffusion_policy import DiffusionPolicyConfig, make_diffusion_bc, reference_config
from agents.evaluation import evaluate
from agents.iql import IQLConfig, advantage_weights, make_iql
from agents.sac import SACConfig
from experiments.plots import plot_intervals
from experiments.runner import fmt_ci, iqm_ci, md_table
from experiments.study import Study, StudyArgs, cli, demonstrations, sac_experts
from skills.compose import ComposeConfig, make_composition
from skills.library import SkillLibrary, composing_policy, learn_skill

ENV = "HalfCheetah"
SKILLS = ("reward", "cost")
MIXES = {"PSEC": "context", "NSEC": "noise", "ASEC": "action"}


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/psec_safe"
    experts: str = "results/psec/experts"  # SAC expert run folders (shared with experiments.psec)
    velocity_limit: float = 3.2096  # Safety-Gymnasium's HalfCheetah velocity threshold
    cost_limit: float = 20.0  # an episode's cost budget (DSRL's thresholds: 10, 20, 40)
    safe_velocity: float = 2.0  # the slow expert's target speed
    noise: tuple[float, ...] = (0.0, 0.3, 0.6)  # action-noise levels of the data
    episodes: int = 4  # per expert and noise level
    episode_steps: int = 1000
    eval_episodes: int = 5  # greedy episodes per seed and arm
    sac: SACConfig = dataclasses.field(
        default_factory=lambda: SACConfig(
            total_steps=30_000, learning_starts=5_000, buffer_size=30_000
        )
    )
    iql: IQLConfig = dataclasses.field(
        default_factory=lambda: IQLConfig(total_steps=5_000, eval_every=5_000, eval_episodes=0)
    )
    base: DiffusionPolicyConfig = dataclasses.field(
        default_factory=lambda: DiffusionPolicyConfig(
            width=128, total_steps=5_000, eval_every=5_000, eval_episodes=0
        )
    )
    skill: DiffusionPolicyConfig = dataclasses.field(
        default_factory=lambda: DiffusionPolicyConfig(
            width=128, rank=8, total_steps=2_000, eval_every=2_000, eval_episodes=0
        )
    )
    compose: ComposeConfig = dataclasses.field(
        default_factory=lambda: ComposeConfig(total_steps=1_000, eval_every=1_000, eval_episodes=0)
    )


def main(args: Args) -> dict:
    study = Study("psec_safe", args)
    if (done := study.finished()) is not None:
        return done
    task = {"velocity_limit": args.velocity_limit}
    env, env_params = envs.make(ENV, max_steps_in_episode=args.episode_steps, **task)
    roles = {
        "forward": {},
        f"velocity {args.safe_velocity:g}": {"target_velocity": args.safe_velocity},
    }
    actors = sac_experts(
        args.experts, ENV, roles, args.sac, args.seed, args.episode_steps, args.progress
    )
    collect = lambda role, noise: demonstrations(
        study.key("data", role, noise), ENV, task, actors[role], args.episodes,
        args.episode_steps, noise, ("cost",),
    )  # fmt: skip
    parts = [collect(role, noise) for role in roles for noise in args.noise]
    data = jax.tree.map(lambda *x: np.concatenate(x), *[t for t, _ in parts])
    cost = np.concatenate([info["cost"] for _, info in parts])
    per_episode = lambda x: x.reshape(-1, args.episode_steps).sum(1)
    returns, costs = per_episode(data.reward), per_episode(cost)
    safe = np.repeat(costs <= args.cost_limit, args.episode_steps)
    if not safe.any():
        raise ValueError(
            f"no episode of the data is within --cost-limit {args.cost_limit} (episode costs "
            f"{costs.min():.0f} to {costs.max():.0f}); raise it, lower --safe-velocity or add "
            "noise levels"
        )
    safe_data = jax.tree.map(lambda x: x[safe], data)

    # 1. the base (the BC arm) and each seed's IQL critics of the reward and of minus the cost
    base_agent = make_diffusion_bc(args.base, data, env, env_params)
    base_keys = study.seed_keys("base")
    base_state, _ = study.stage(("base",), base_agent.train, base_keys, what="the base")
    bases = jax.vmap(base_agent.policy_params)(base_state)["net"]
    spec = base_agent.policy.spec
    labelled = {"reward": data, "cost": data._replace(reward=-cost)}

    def weights(name: str) -> jax.Array:  # [S, N]
        iql = make_iql(args.iql, labelled[name], env, env_params)
        keys, what = study.seed_keys("iql", name), f"IQL of the {name}"
        states, _ = study.stage(("iql", name), iql.train, keys, what=what)
        one = lambda state: advantage_weights(args.iql, state, labelled[name], env, env_params)
        return jax.jit(jax.vmap(one))(states)

    # 2. the two skills on every seed's base, 3. their compositions
    def skill(name: str) -> Any:
        one = lambda base, w, key: learn_skill(
            spec, base, name, data, args.skill, env, env_params, key, w
        )
        keys = study.seed_keys("skill", name)
        stage = ("skill", name)
        adapters, _ = study.stage(stage, one, bases, weights(name), keys, what=f"the {name} skill")
        return jax.tree.map(lambda x: x[:, 0], adapters)

    skills = {name: skill(name) for name in SKILLS}  # {name: [S, ...]}

    def score(policy, params, name: str, per_skill: bool = False) -> dict[str, np.ndarray]:
        """Greedy episodes of ``policy`` with each seed's ``params`` [S, ...] (``per_skill``:
        [S, K, ...], one policy per skill): {metric: [S] (or [S, K])}."""
        run = lambda p, key: evaluate(key, env, env_params, policy, p, args.eval_episodes)
        over_skills = ({"net": None, "adapters": 0, "weights": 0}, None)
        run = jax.vmap(run, in_axes=over_skills) if per_skill else run
        out = jax.jit(jax.vmap(run))(params, study.seed_keys("eval", name))
        ret, cost = np.asarray(out["return"]).mean(-1), np.asarray(out["cost"]).mean(-1)
        span = max(returns.max() - returns.min(), 1e-8)
        return {
            "return": ret,
            "normalized_return": (ret - returns.min()) / span,
            "normalized_cost": cost / args.cost_limit,
        }

    arms = {"BC": score(base_agent.policy, jax.vmap(base_agent.policy_params)(base_state), "BC")}
    for name, mix in MIXES.items():

        def one(base, adapters, key, mix=mix):
            library = SkillLibrary(spec, base, adapters)
            agent = make_composition(args.compose, library, SKILLS, safe_data, env, env_params, mix)
            state, metrics = agent.train(key)
            return agent.policy_params(state), metrics

        keys = study.seed_keys("compose", name)
        params, _ = study.stage(("compose", name), one, bases, skills, keys, what=name)
        arms[name] = score(composing_policy(spec, mix), params, name)
    alone = jax.tree.map(lambda *x: jnp.stack(x, 1)[:, :, None], *skills.values())  # [S, K, 1]
    params = {"net": bases, "adapters": alone, "weights": jnp.ones((args.seeds, len(SKILLS), 1))}
    scores = score(composing_policy(spec, "param"), params, "alone", per_skill=True)  # [S, K]
    arms |= {
        f"{n} skill alone": {k: v[:, i] for k, v in scores.items()} for i, n in enumerate(SKILLS)
    }

    results = {
        "dataset": {
            "episodes": len(returns),
            "safe_episodes": int((costs <= args.cost_limit).sum()),
            "return_range": [float(returns.min()), float(returns.max())],
            "mean_cost": float(costs.mean()),
        },
        "arms": {a: {k: iqm_ci(v) for k, v in m.items()} for a, m in arms.items()},
        "per_seed": arms,
    }
    for metric in ("normalized_return", "normalized_cost"):
        scores = {a: m[metric] for a, m in arms.items()}
        plot_intervals(study.path / f"{metric}.png", scores, metric.replace("_", " "))
    return study.finish(results, _summary(args, results))


def _summary(args: Args, r: dict) -> str:
    d = r["dataset"]
    header = ["arm", "normalised return", "normalised cost (<= 1 is safe)", "return"]
    cells = lambda m: [m["normalized_return"], m["normalized_cost"], fmt_ci(m["return"], 0)]
    rows = [[a, *cells(m)] for a, m in r["arms"].items()]
    lines = [
        f"# PSEC, safe composition on HalfCheetah ({args.seeds} seeds, IQM [95% CI])\n",
        f"Velocity limit {args.velocity_limit} m/s, cost limit {args.cost_limit} per episode. "
        f"Data: {d['episodes']} episodes ({d['safe_episodes']} safe), returns "
        f"{d['return_range'][0]:.0f} to {d['return_range'][1]:.0f}, mean cost "
        f"{d['mean_cost']:.0f}.\n",
        md_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def paper() -> Args:
    """PSEC's safe-RL launcher: SAC experts for 1M env steps, ten times the data (40 episodes
    per expert and noise level), IQL for 1M steps, a base pretrained for 1M steps at batch
    2048, skills of rank 16 and scale 32 for 100k steps at batch 512, 20 evaluation episodes."""
    return Args(
        episodes=40,
        eval_episodes=20,
        sac=SACConfig(),  # the published 1M env steps
        iql=IQLConfig(total_steps=1_000_000, eval_every=100_000, eval_episodes=0),
        base=reference_config(eval_episodes=0),
        skill=reference_config(rank=16, lora_scale=32.0, total_steps=100_000, eval_episodes=0),
        compose=ComposeConfig(total_steps=1_000, eval_every=1_000, batch_size=512, eval_episodes=0),
    )


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
