"""Skill-boundary detection speed: segmentation throughput and action-model training time.

Segmentation is one ``lax.scan`` over time (the memory reset depends on each decision), vmapped
over a batch of trajectories; throughput is trajectory steps per second. The peer, measured in
the same run, is the same model scoring the same batch without the rule or resets
(``ActionModel.nll``, the GRU scanned by flax): the cost floor of any loss-based rule. Training
is the action model's behaviour cloning (``skills.action_model.make_action_model``, one
``agents.bc`` gradient step per trajectory batch).

    python -m benchmarks.sbd_throughput
"""

from __future__ import annotations

import dataclasses
import json

import jax
import tyro

import envs
from agents.replay import Transition
from benchmarks.timing import timed as _timed
from benchmarks.timing import write_json
from envs.gridworlds.multi_skill import rollout_expert
from skills.action_model import ActionModel, ActionModelConfig, episode_starts, make_action_model
from skills.boundary import BoundaryConfig, detect_boundaries


@dataclasses.dataclass
class Args:
    env_kwargs: str = '{"height": 33, "width": 33, "num_objects": 3}'  # as experiments.sbd
    length: int = 64  # steps per trajectory
    batches: tuple[int, ...] = (1, 64, 1024, 4096)
    hidden: int = 48  # embed, GRU and head width (as experiments.sbd)
    train_steps: int = 200  # gradient steps
    train_batch: int = 32
    repeats: int = 3
    out: str | None = None


def main(args: Args) -> dict:
    env, params = envs.make("MultiSkill", **json.loads(args.env_kwargs))
    config = ActionModelConfig(
        embed=(args.hidden,),
        gru_hidden=args.hidden,
        head=(args.hidden,),
        total_steps=args.train_steps,
        batch_size=args.train_batch,
    )
    space = env.action_space(params)
    model = ActionModel.create(config, space)
    most = max(args.batches)
    demos = jax.jit(jax.vmap(lambda k: rollout_expert(k, env, params, args.length)))(
        jax.random.split(jax.random.key(0), most)
    )
    start = episode_starts(demos.terminated, demos.truncated)
    model_params = model.init(jax.random.key(1), demos.obs.shape[-1])
    rule = BoundaryConfig(gap=1.0)

    def segment(p, obs, action, starts):
        step = model.step_fn(p)
        return jax.vmap(
            lambda o, a, s: detect_boundaries(step, model.initial_memory(), (o, a), rule, None, s)
        )(obs, action, starts)

    def plain_nll(p, obs, action, starts):
        tm = lambda x: jax.numpy.swapaxes(x, 0, 1)
        return model.nll(p, tm(obs), tm(action), tm(starts))

    rows = []
    for n in args.batches:
        batch = (model_params, demos.obs[:n], demos.action[:n], start[:n])
        seg_compile, seg_s = _timed(segment, *batch, repeats=args.repeats)
        _, par_s = _timed(plain_nll, *batch, repeats=args.repeats)
        steps = n * args.length
        rows.append(
            {
                "trajectories": n,
                "segment_steps_per_s": steps / seg_s,
                "plain_nll_steps_per_s": steps / par_s,
                "ratio": par_s / seg_s,
                "compile_s": seg_compile,
            }
        )
    agent = make_action_model(config, space, Transition(*demos[:6]))
    train_compile, train_s = _timed(agent.train, jax.random.key(2), repeats=args.repeats)

    print(f"segmentation, T = {args.length}, GRU {args.hidden}, obs {demos.obs.shape[-1]}")
    print("| trajectories | SBD scan steps/s | plain NLL steps/s | SBD / plain | compile s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['trajectories']} | {r['segment_steps_per_s']:,.0f} | "
            f"{r['plain_nll_steps_per_s']:,.0f} | {r['ratio']:.2f}x | {r['compile_s']:.1f} |"
        )
    per_step = train_s / args.train_steps
    print(
        f"\naction-model training: {args.train_steps} gradient steps of {args.train_batch} x "
        f"{args.length} steps in {train_s:.2f} s ({1 / per_step:.1f} gradient steps/s, "
        f"{args.train_batch * args.length / per_step:,.0f} steps/s), "
        f"compile {train_compile:.1f} s"
    )
    result = {
        "segmentation": rows,
        "train_s": train_s,
        "train_gradient_steps_per_s": 1 / per_step,
        "train_compile_s": train_compile,
    }
    return write_json(args.out, result)


if __name__ == "__main__":
    main(tyro.cli(Args))
