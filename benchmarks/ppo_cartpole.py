"""PPO on gymnax CartPole-v1: wall-clock to a greedy return of 475 and steps/s, against rejax.

Both learners get the same hyperparameters (PureJaxRL's CartPole set) and run in the same
process, trained in equal chunks; after each chunk the greedy policy is evaluated on 64
episodes (outside the timed region). Differences the APIs impose: rejax clips gradients
element-wise and keeps separate actor/critic optimisers; rejax's GAE treats truncation as
termination (CartPole truncates at 500).

    python -m benchmarks.ppo_cartpole --seeds 3
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from agents.core import Policy, no_carry
from agents.evaluation import evaluate
from agents.ppo import PPOConfig, make_ppo
from benchmarks.timing import write_json


@dataclasses.dataclass
class Args:
    seeds: int = 3
    chunks: int = 10
    updates_per_chunk: int = 100  # 100 updates x 512 steps = 51,200 env steps per chunk
    target: float = 475.0
    anneal_lr: bool = False  # rejax has no annealing; keep the two comparable
    out: str | None = None


class _FiveTupleStep:
    """gymnax 1.x env with the gymnax 0.0.x ``step`` signature that rejax 0.1.3 expects."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["_env"], name)

    def step(self, key, state, action, params=None):
        obs, state, reward, term, trunc, info = self._env.step(key, state, action, params)
        return obs, state, reward, jnp.logical_or(term, trunc), info


def _run(name, init, chunk, policy, params_of, env, params, seed, args) -> dict:
    key = jax.random.key(seed)
    eval_key = jax.random.fold_in(key, 1)  # the same 64 episodes after every chunk
    state = init(key)
    t0 = time.perf_counter()
    compiled = jax.jit(chunk).lower(state).compile()
    compile_s = time.perf_counter() - t0
    greedy = jax.jit(
        lambda s, k: evaluate(k, env, params, policy, params_of(s), 64)["return"].mean()
    )
    train_s, to_target, curve = 0.0, None, []
    for _ in range(args.chunks):
        t0 = time.perf_counter()
        state = jax.block_until_ready(compiled(state))
        train_s += time.perf_counter() - t0
        curve.append(float(greedy(state, eval_key)))
        if to_target is None and curve[-1] >= args.target:
            to_target = train_s
    steps = args.chunks * args.updates_per_chunk * 512
    return {
        "learner": name,
        "seed": seed,
        "compile_s": compile_s,
        "train_s": train_s,
        "steps_per_s": steps / train_s,
        "seconds_to_target": to_target,
        "curve": curve,
    }


def ours(env, params, seed, args) -> dict:
    config = PPOConfig(
        anneal_lr=args.anneal_lr, total_steps=args.chunks * args.updates_per_chunk * 512
    )
    ppo = make_ppo(config, env, params)

    def chunk(rs):
        return jax.lax.scan(
            lambda s, _: (ppo.update(s)[0], None), rs, None, args.updates_per_chunk
        )[0]

    return _run("ours", ppo.init, chunk, ppo.policy, ppo.policy_params, env, params, seed, args)


def rejax_ppo(env, params, seed, args) -> dict:
    from rejax import PPO

    algo = PPO.create(
        env=_FiveTupleStep(env),
        env_params=params,
        num_envs=4,
        num_steps=128,
        num_epochs=4,
        num_minibatches=4,
        learning_rate=2.5e-4,
        max_grad_norm=0.5,
        gamma=0.99,
        gae_lambda=0.95,
        clip_eps=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        agent_kwargs={"activation": "tanh"},
        total_timesteps=args.updates_per_chunk * 512,
        eval_freq=args.updates_per_chunk * 512,
        skip_initial_evaluation=True,
    )
    algo = algo.replace(eval_callback=lambda a, ts, rng: jnp.float32(0.0))

    def chunk(ts):
        return algo.train(train_state=ts)[0]

    def act(actor_params, carry, obs, key, deterministic=True):
        return carry, algo.actor.apply(actor_params, obs, method="_action_dist").mode()

    policy = Policy(act, no_carry, {})
    params_of = lambda ts: ts.actor_ts.params
    return _run("rejax", algo.init_state, chunk, policy, params_of, env, params, seed, args)


def main(args: Args) -> list[dict]:
    env, params = envs.make("gymnax:CartPole-v1")
    rows = [fn(env, params, s, args) for s in range(args.seeds) for fn in (ours, rejax_ppo)]
    print("| learner | seed | compile s | train s | steps/s | s to 475 | final greedy return |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t = "never" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.2f}"
        print(
            f"| {r['learner']} | {r['seed']} | {r['compile_s']:.1f} | {r['train_s']:.2f} | "
            f"{r['steps_per_s']:,.0f} | {t} | {r['curve'][-1]:.1f} |"
        )
    for metric in ("steps_per_s", "train_s", "compile_s"):
        med = {
            n: np.median([r[metric] for r in rows if r["learner"] == n]) for n in ("ours", "rejax")
        }
        print(
            f"median {metric}: ours {med['ours']:.2f}, rejax {med['rejax']:.2f}, "
            f"ratio ours/rejax {med['ours'] / med['rejax']:.2f}"
        )
    hit = {
        n: [r["seconds_to_target"] for r in rows if r["learner"] == n and r["seconds_to_target"]]
        for n in ("ours", "rejax")
    }
    for n, v in hit.items():
        print(
            f"{n}: reached {args.target} in {len(v)}/{args.seeds} seeds, median "
            f"{np.median(v) if v else float('nan'):.2f} s"
        )
    return write_json(args.out, rows)


if __name__ == "__main__":
    main(tyro.cli(Args))
