"""Cultural accumulation: wall-clock per generation and env steps/s, in context and in weights.

In context: one test-time generation (frozen social learner, ``population`` copies on
``tasks`` task instances per seed, all seeds vmapped). In weights: one generation (train
``population`` fresh recurrent PPO agents per seed on Memory Sequence with the social channel,
then evaluate them alone and with the demonstrators). The peer is the same PPO program on
plain Memory Sequence (no social channel, no evaluation), measured in the same run: the ratio
is the cost of the social channel and the generation's bookkeeping.

    python -m benchmarks.cultural
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import tyro

import envs  # noqa: F401  (sets the XLA flags before any JAX program runs)
from agents.cultural import (
    VISIBILITY,
    InContextConfig,
    InWeightsConfig,
    make_in_context_generation,
    make_in_weights_generation,
)
from agents.ppo import make_ppo
from benchmarks.timing import timed as _time
from envs.gridworlds.memory_sequence import MemorySequence
from envs.gridworlds.social import SocialMemorySequence
from experiments import cultural_in_context, cultural_in_weights


@dataclasses.dataclass
class Args:
    seeds: int = 5
    repeats: int = 3
    # in context (the study's defaults)
    population: int = 3
    tasks: int = 32
    seq_len: int = 6
    # in weights: one generation = seeds x population agents x steps
    iw_population: int = 2
    iw_steps: int = 16_384
    iw_seq_len: int = 24
    out: str | None = None  # JSON file for the figures


def in_context(args: Args) -> dict:
    env = SocialMemorySequence()
    params = env.in_context_params(seq_len=args.seq_len)
    ppo = make_ppo(cultural_in_context.default_ppo(), env, params)
    agents = jax.vmap(ppo.init)(jax.random.split(jax.random.key(0), args.seeds))
    agents = agents.train_state.params
    gen = make_in_context_generation(
        InContextConfig(population=args.population), ppo.policy, env, params
    )
    fn = jax.vmap(jax.vmap(gen, in_axes=(None, 0, 0, 0)))
    shape = (args.seeds, args.tasks)
    seqs = jax.random.randint(jax.random.key(1), shape + (args.seq_len,), 0, 3)
    keys = jax.random.split(jax.random.key(2), args.seeds * args.tasks).reshape(shape)
    compile_s, run_s = _time(fn, agents, seqs, seqs, keys, repeats=args.repeats)
    steps = args.seeds * args.tasks * args.population * params.num_trials * args.seq_len
    return {"compile_s": compile_s, "generation_s": run_s, "env_steps_per_s": steps / run_s}


def in_weights(args: Args) -> dict:
    ppo_cfg = cultural_in_weights.default_ppo().replace(total_timesteps=args.iw_steps)
    config = InWeightsConfig(ppo_cfg, population=args.iw_population)
    env = SocialMemorySequence()
    demos = jnp.zeros((config.num_demos, args.iw_seq_len), jnp.int32)
    params = env.in_weights_params(0, 10, args.iw_seq_len, demos=demos)
    gen = make_in_weights_generation(config, env, params)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    visibility = jnp.array(VISIBILITY["anneal"])
    fn = jax.vmap(lambda k: gen(k, params, demos, visibility))
    compile_s, run_s = _time(fn, keys, repeats=args.repeats)
    agents = args.seeds * args.iw_population
    # the peer: the same PPO runs on plain Memory Sequence, nothing else
    plain = MemorySequence.in_weights_params(0, 10, args.iw_seq_len)
    train = make_ppo(ppo_cfg, MemorySequence(), plain).train
    peer_keys = jax.random.split(jax.random.key(0), agents)
    peer_compile_s, peer_run_s = _time(jax.vmap(train), peer_keys, repeats=args.repeats)
    steps = agents * ppo_cfg.num_updates * ppo_cfg.batch_size
    return {
        "compile_s": compile_s,
        "generation_s": run_s,
        "train_env_steps_per_s": steps / run_s,
        "peer_compile_s": peer_compile_s,
        "peer_run_s": peer_run_s,
        "peer_env_steps_per_s": steps / peer_run_s,
        "ratio_vs_peer": peer_run_s / run_s,
    }


def main(args: Args) -> dict:
    ic, iw = in_context(args), in_weights(args)
    print("| setting | what one generation is | compile s | s / generation | env steps/s |")
    print("|---|---|---|---|---|")
    print(
        f"| in context | {args.seeds} seeds x {args.tasks} tasks x {args.population} agents x "
        f"4 trials | {ic['compile_s']:.1f} | {ic['generation_s']:.3f} | "
        f"{ic['env_steps_per_s']:,.0f} |"
    )
    print(
        f"| in weights | {args.seeds} seeds x {args.iw_population} agents x {args.iw_steps:,} "
        f"PPO steps + evaluation | {iw['compile_s']:.1f} | {iw['generation_s']:.2f} | "
        f"{iw['train_env_steps_per_s']:,.0f} |"
    )
    print(
        f"| peer: PPO alone, plain Memory Sequence | same agents and steps | "
        f"{iw['peer_compile_s']:.1f} | {iw['peer_run_s']:.2f} | "
        f"{iw['peer_env_steps_per_s']:,.0f} (ours/peer {iw['ratio_vs_peer']:.2f}x) |"
    )
    result = {"in_context": ic, "in_weights": iw, "args": dataclasses.asdict(args)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
