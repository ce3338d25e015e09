"""PSEC under continual policy shift or dynamics shift on HalfCheetah: a diffusion base, LoRA
skills, composition.

SAC experts (trained here once in one vmapped program, or loaded from ``--experts``) act out
each behaviour's data (``envs.mujoco.variants``). ``--shift policy``: the same physics, other
rewards: ``base_episodes`` of running forward for the base, ``skill_episodes`` each of running
backward and of jumping for two LoRA skills, and of the target, running backward while jumping.
``--shift dynamics``: forward running on the nominal dynamics (base), low friction and heavy
bodies (skills), both at once (the target, a shift no skill saw).

Every arm is scored on the target: scratch, full fine-tuning of the base and a LoRA on the target
episodes; each skill alone; the skills composed by PSEC (context-aware alpha(s), from the
uniform mix, or anchored at the best-fitting skill), by fixed weights in parameter space, in
noise space (NSEC) and in action space (ASEC); MLP-PSEC (a Gaussian base instead of diffusion);
PSEC at each rank of ``--ranks``. Each stage runs all seeds in one vmapped program; seeds
share the data.

    python -m experiments.psec                      # CPU scale, see the README for the time
    python -m experiments.psec --shift dynamics --ranks
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import numpy as np

import envs
from agents.diffusion_policy import DiffusionPolicyConfig, make_diffusion_bc, reference_config
from agents.evaluation import evaluate
from agents.sac import SACConfig
from envs.mujoco.variants import BEHAVIOURS, DYNAMICS
from experiments.plots import plot_intervals
from experiments.runner import iqm_ci, md_table
from experiments.study import Study, StudyArgs, cli, demonstrations, sac_experts
from skills.compose import ComposeConfig, fit_losses, make_composition
from skills.library import SkillLibrary, composing_policy, learn_skill

ENV = "HalfCheetah"
#: {shift: {behaviour: task params}}: the base's, the two skills', the target's, in this order.
SHIFTS = {"policy": BEHAVIOURS, "dynamics": DYNAMICS}
MIXES = {"PSEC": "context", "PSEC, fixed weights": "param", "NSEC": "noise", "ASEC": "action"}
ANCHORED = "PSEC, anchored at the best skill"  # alpha starts one-hot, its mean held there
ALONE, LORA = "skills alone", "LoRA on the target (no composition)"
#: every arm but the rank ablation (``--ranks``); the base and the skills always train
ARMS = (*MIXES, ANCHORED, ALONE, "scratch", "full fine-tuning", LORA, "MLP-PSEC")


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/psec"
    shift: Literal["policy", "dynamics"] = "policy"
    experts: str = "results/psec/experts"  # SAC expert run folders, one per behaviour
    sac: SACConfig = dataclasses.field(
        default_factory=lambda: SACConfig(
            total_steps=30_000, learning_starts=5_000, buffer_size=30_000
        )
    )
    episode_steps: int = 1000
    base_episodes: int = 20  # episodes of the base's behaviour
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
    arms: tuple[str, ...] = ARMS  # the arms to run (a later run with more reuses those done)


def main(args: Args) -> dict:
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; choose from {list(ARMS)}")
    behaviours = SHIFTS[args.shift]
    study = Study("psec", args, selects=("ranks", "arms"), behaviours=behaviours)
    if (done := study.finished()) is not None:
        return done
    env, default = envs.make(ENV, max_steps_in_episode=args.episode_steps)
    task = lambda name: default.replace(**behaviours[name])
    first, *middle, target_name = behaviours
    skill_names = tuple(middle)
    episodes = {n: args.skill_episodes for n in behaviours} | {first: args.base_episodes}
    actors = sac_experts(
        args.experts, ENV, behaviours, args.sac, args.seed, args.episode_steps, args.progress
    )
    data = {
        n: demonstrations(
            study.key("demonstrations", n), ENV, behaviours[n], actors[n], k, args.episode_steps
        )
        for n, k in episodes.items()
    }
    final = lambda metrics: np.asarray(metrics["return"])[:, -1]  # [S]: the last evaluation

    def base(model: str) -> tuple[dict, Any, np.ndarray]:
        """Each seed's base (``model``) cloned from the first behaviour: spec, params, score."""
        config = args.base.replace(model=model)
        agent = make_diffusion_bc(config, data[first], env, task(first))
        keys = study.seed_keys("base", model)
        state, metrics = study.stage(("base", model), agent.train, keys, what=f"the {model} base")
        return agent.policy.spec, jax.vmap(agent.policy_params)(state)["net"], final(metrics)

    def skills(spec: dict, bases: Any, rank: int) -> tuple[dict, dict]:
        """Each seed's skills (rank ``rank``) from a few episodes each, on its frozen base."""
        config = args.skill.replace(rank=rank, model=spec["model"])

        def learn(name):
            one = lambda base, key: learn_skill(
                spec, base, name, data[name], config, env, task(name), key
            )
            stage = ("skill", name, rank, spec["model"])
            return study.stage(stage, one, bases, study.seed_keys(*stage), what=f"skill {name!r}")

        trained = {name: learn(name) for name in skill_names}
        adapters = {n: jax.tree.map(lambda x: x[:, 0], a) for n, (a, _) in trained.items()}
        return adapters, {n: final(m) for n, (_, m) in trained.items()}

    def compose(
        spec: dict, bases: Any, adapters: dict, mix: str, name: str, config: Any = None
    ) -> np.ndarray:
        """Each seed's skills composed by ``mix`` on the target: the final returns [S]."""

        def one(base, skill_adapters, key):
            agent = make_composition(
                config or args.compose, SkillLibrary(spec, base, skill_adapters), skill_names,
                data[target_name], env, task(target_name), mix,
            )  # fmt: skip
            return agent.train(key)[1]

        keys = study.seed_keys("compose", name)
        return final(study.stage(("compose", name), one, bases, adapters, keys, what=name))

    def tuned(spec: dict, bases: Any, rank: int, name: str) -> np.ndarray:
        """Each seed's base tuned on the target: a LoRA of ``rank``, or fully at rank 0."""
        config = args.skill.replace(rank=rank)
        target_data, target_task = data[target_name], task(target_name)

        def one(base, key):
            if rank:
                return learn_skill(
                    spec, base, "target", target_data, config, env, target_task, key
                )[1]
            agent = make_diffusion_bc(
                config, target_data, env, target_task, base=base, units=spec["units"]
            )
            return agent.train(key)[1]

        return final(study.stage((name,), one, bases, study.seed_keys(name), what=name))

    def alone(spec: dict, bases: Any, adapters: dict) -> dict[str, np.ndarray]:
        """Each seed's skills, each alone on the target: greedy returns {skill: [S]}."""
        policy, target_task = composing_policy(spec, "param"), task(target_name)
        stacked = jax.tree.map(lambda *x: np.stack(x, 1)[:, :, None], *adapters.values())

        def run(base, adapter, key):  # adapter [1, ...] -> mean return []
            params = {"net": base, "adapters": adapter, "weights": np.ones(1)}
            episodes = max(args.skill.eval_episodes, 1)
            return evaluate(key, env, target_task, policy, params, episodes)["return"].mean()

        over_skills = jax.vmap(run, in_axes=(None, 0, None))  # [K]
        keys = study.seed_keys("alone")
        returns = study.stage(("alone", spec["model"]), over_skills, bases, stacked, keys)  # [S, K]
        return {f"{n} skill alone": np.asarray(returns[:, i]) for i, n in enumerate(adapters)}

    # 1. the base, 2. the skills, 3. every arm on the target
    spec, bases, base_score = base("diffusion")
    adapters, skill_scores = skills(spec, bases, args.skill.rank)
    scores = {f"base on {first}": base_score}
    scores |= {f"{n} skill on {n}": s for n, s in skill_scores.items()}
    arms = set(args.arms)
    target = {n: compose(spec, bases, adapters, mix, n) for n, mix in MIXES.items() if n in arms}
    if ANCHORED in arms:
        anchored = args.compose.replace(start="best", anchor=1.0)  # the reference's regulariser
        target[ANCHORED] = compose(spec, bases, adapters, "context", "PSEC-anchored", anchored)
        fit = lambda base, skill_adapters: fit_losses(
            SkillLibrary(spec, base, skill_adapters), skill_names, data[target_name], env,
            task(target_name),
        )  # fmt: skip
        picked = np.asarray(jax.jit(jax.vmap(fit))(bases, adapters)).argmin(-1)  # [S]
        starts = {n: int(np.sum(picked == i)) for i, n in enumerate(skill_names)}
    if ALONE in arms:
        target |= alone(spec, bases, adapters)
    if "scratch" in arms:
        config = args.skill.replace(rank=0)
        scratch = make_diffusion_bc(config, data[target_name], env, task(target_name))
        keys = study.seed_keys("scratch")
        target["scratch"] = final(study.stage(("scratch",), scratch.train, keys, what="scratch")[1])
    if "full fine-tuning" in arms:
        target["full fine-tuning"] = tuned(spec, bases, 0, "fine-tune")
    if LORA in arms:
        target[LORA] = tuned(spec, bases, args.skill.rank, "lora-target")
    if "MLP-PSEC" in arms:
        mlp_spec, mlp_bases, scores[f"MLP base on {first}"] = base("gaussian")
        mlp_adapters, _ = skills(mlp_spec, mlp_bases, args.skill.rank)
        target["MLP-PSEC"] = compose(mlp_spec, mlp_bases, mlp_adapters, "context", "MLP-PSEC")
    for rank in args.ranks:
        if rank != args.skill.rank:
            ranked = skills(spec, bases, rank)[0]
            target[f"PSEC, rank {rank}"] = compose(spec, bases, ranked, "context", f"rank {rank}")
    target_expert = float(np.mean(data[target_name].reward) * args.episode_steps)
    results = {
        "shift": args.shift,
        **({"anchored_starts": starts} if ANCHORED in arms else {}),
        "episodes": episodes,
        "target_expert_return": target_expert,
        "library": {k: iqm_ci(v) for k, v in scores.items()},
        "target": {k: iqm_ci(v) for k, v in target.items()},
        "per_seed": {"library": scores, "target": target},
    }
    plot_intervals(study.path / "target_returns.png", target, f"return on {target_name}")
    return study.finish(results, _summary(args, results))


def _summary(args: Args, r: dict) -> str:
    lines = [
        f"# PSEC on HalfCheetah, {args.shift} shift ({args.seeds} seeds, IQM [95% CI])\n",
        f"Behaviours: {SHIFTS[args.shift]} (base, skills, target). Base: {args.base_episodes} "
        f"episodes; skills and target: {args.skill_episodes} "
        f"episodes each of {args.episode_steps} steps. Target expert's return: "
        f"{r['target_expert_return']:.0f}.\n",
        md_table(["library", "return on its own task"], r["library"].items()),
        "",
        md_table(["arm", "return on the target"], r["target"].items()),
    ]
    if "anchored_starts" in r:  # seeds whose anchored alpha started at each skill
        counts = ", ".join(f"{k} in {v}" for k, v in r["anchored_starts"].items())
        lines.append(f"\nThe anchored composition started at the best-fitting skill: {counts}.")
    return "\n".join(lines) + "\n"


def paper() -> Args:
    """PSEC's published scale: SAC experts for 1M env steps; a base of D4RL size (1,000
    episodes) pretrained for 1M steps at batch 2048 (EMA 0.001); skills of rank 8, scale 16,
    200k steps at batch 512; the composition network 1k steps at batch 512; 10 evaluation
    episodes (``agents.diffusion_policy.reference_config``)."""
    return Args(
        sac=SACConfig(),  # the published 1M env steps
        base_episodes=1_000,
        base=reference_config(eval_episodes=10),
        skill=reference_config(rank=8, eval_episodes=10),
        compose=ComposeConfig(total_steps=1_000, eval_every=500, batch_size=512, eval_episodes=10),
    )


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
