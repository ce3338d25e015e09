"""D4RL-style dataset levels from one learner's run: snapshots, the medium/expert choice, rollouts.

    agent = with_snapshots(agent, env, env_params, updates_per_stage, eval_episodes)
    run, metrics = jax.jit(agent.train)(key)           # metrics["eval_return"]: [num_stages]
    expert = int(np.argmax(evals)); medium = medium_snapshot(evals, evals[expert])
    data = make_levels(key, env, env_params, policy, snapshot(medium), snapshot(expert),
                       replay_rows, num_steps, num_envs)

As in D4RL: ``random`` is uniformly random actions; ``expert`` the best snapshot by greedy
evaluation return; ``medium`` the snapshot closest to a third of the expert's return, among those
up to the first that reaches it (a dip of a noisy curve late in training is not a medium
policy); both sample the stochastic policy; ``medium-replay`` is the learner's replay buffer up to
the medium snapshot; ``medium-expert`` both together.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agents.core import Agent, Params, Policy, no_carry, policy_spec
from agents.evaluation import evaluate
from agents.replay import Transition
from agents.replay.datasets import collect, episode_returns, normalized_score

__all__ = [
    "LEVELS",
    "Snapshots",
    "level_stats",
    "make_levels",
    "medium_snapshot",
    "uniform_policy",
    "with_snapshots",
]

LEVELS = ("random", "medium", "expert", "medium-replay", "medium-expert")


class Snapshots(NamedTuple):
    """A learner's state plus its policy parameters after every stage."""

    state: Any  # the learner's state
    params: Any  # policy params stacked over stages [num_stages, ...]
    stage: jax.Array  # [] int32, stages done
    key: jax.Array  # evaluation randomness, apart from the learner's


def with_snapshots(
    agent: Agent, env: Any, env_params: Any, updates_per_stage: int, eval_episodes: int
) -> Agent:
    """``agent`` whose update is one stage: ``updates_per_stage`` of its updates (metrics
    averaged; ``return`` over the updates where episodes ended), then a greedy evaluation on
    ``eval_episodes`` episodes (``eval_return``, ``eval_return_std``) of the policy, whose
    parameters are kept. Its state is a ``Snapshots``."""
    num_stages = agent.num_updates // updates_per_stage

    def init(key: jax.Array) -> Snapshots:
        k_agent, k_eval = jax.random.split(key)
        state = agent.init(k_agent)
        stack = lambda x: jnp.zeros((num_stages, *x.shape), x.dtype)
        params = jax.tree.map(stack, agent.policy_params(state))
        return Snapshots(state, params, jnp.zeros((), jnp.int32), k_eval)

    def update(run: Snapshots) -> tuple[Snapshots, dict]:
        state, m = jax.lax.scan(lambda s, _: agent.update(s), run.state, None, updates_per_stage)
        key, k_eval = jax.random.split(run.key)
        params = agent.policy_params(state)
        returns = evaluate(k_eval, env, env_params, agent.policy, params, eval_episodes)["return"]
        metrics = {k: jnp.nanmean(v) for k, v in m.items()}
        metrics |= {"eval_return": returns.mean(), "eval_return_std": returns.std()}
        keep = lambda stacked, x: stacked.at[run.stage].set(x)
        snapshots = jax.tree.map(keep, run.params, params)
        return Snapshots(state, snapshots, run.stage + 1, key), metrics

    def learn(run: Snapshots) -> tuple[Snapshots, dict]:
        state, metrics = agent.learn(run.state)
        return run._replace(state=state), metrics

    return Agent(
        agent.policy,
        init,
        learn,
        update,
        lambda run: agent.policy_params(run.state),
        num_updates=num_stages,
        steps_per_update=agent.steps_per_update * updates_per_stage,
        step_unit=agent.step_unit,
        steps_before=agent.steps_before,
    )


def medium_snapshot(evals: np.ndarray, expert_return: float, random_return: float = 0.0) -> int:
    """The stage closest to a third of the way from ``random_return`` to ``expert_return`` (D4RL:
    a third of the expert's, random 0) up to the first stage that reaches it (returns that can
    be negative, e.g. velocity tracking, need the random return)."""
    target = random_return + (expert_return - random_return) / 3
    reached = np.flatnonzero(evals >= target)
    last = reached[0] if reached.size else evals.size - 1
    return int(np.argmin(np.abs(evals[: last + 1] - target)))


def uniform_policy(low: Any, high: Any) -> Policy:
    """Uniformly random actions within ``[low, high]`` [act_dim]."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)

    def act(params, carry, obs, key, deterministic=False):
        return carry, jax.random.uniform(key, (obs.shape[0], *low.shape), minval=low, maxval=high)

    return Policy(act, no_carry, policy_spec(uniform_policy, low=low, high=high))


def make_levels(
    key: jax.Array,
    env: Any,
    env_params: Any,
    policy: Policy,
    medium: Params,
    expert: Params,
    replay: Transition,
    num_steps: int,
    num_envs: int,
) -> dict[str, Transition]:
    """Every level as time-major ``[T, E]`` host arrays: ``num_steps`` steps in ``num_envs``
    envs of random, medium and expert (``policy`` with the ``medium``/``expert`` params, sampled),
    both together (``[T, 2E]``, no episode cut at the seam), and ``replay`` [T, E'] as it is."""
    space = env.action_space(env_params)

    def rollout(policy: Policy, params: Any, key: jax.Array) -> Transition:
        act = lambda obs, k: policy.act(params, (), obs, k)[1]
        return collect(key, env, env_params, act, num_steps, num_envs)

    k_random, k_medium, k_expert = jax.random.split(key, 3)
    uniform = uniform_policy(space.low, space.high)
    sampled = jax.jit(lambda params, key: rollout(policy, params, key))
    data = {
        "random": jax.jit(lambda key: rollout(uniform, (), key))(k_random),
        "medium": sampled(medium, k_medium),
        "expert": sampled(expert, k_expert),
        "medium-replay": replay,
    }
    join = lambda m, e: jnp.concatenate([m, e], axis=1)
    data["medium-expert"] = jax.tree.map(join, data["medium"], data["expert"])
    return jax.tree.map(np.asarray, data)


def level_stats(
    task: str, data: Transition, random_return: float, expert_return: float
) -> dict[str, Any]:
    """Size and mean return of the complete episodes in ``data`` [T, E] (each env's trailing
    part is left out), normalised by the given references and by D4RL's."""
    columns = [jax.tree.map(lambda x, i=i: x[:, i], data) for i in range(data.reward.shape[1])]
    returns = np.concatenate([episode_returns(c) for c in columns])
    mean = float(returns.mean()) if returns.size else float("nan")
    return {
        "transitions": int(data.reward.size),
        "episodes": int(returns.size),
        "mean_return": mean,
        "normalized": normalized_score(task, mean, random_return, expert_return),
        "d4rl_normalized": normalized_score(task, mean),
    }
