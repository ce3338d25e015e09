"""Cultural accumulation (Cook et al. 2024, arXiv 2406.00392): generations of recurrent PPO
agents that build on the previous generation's play, in context and in weights.

The agent is ``agents.ppo``'s recurrent PPO, RL^2-style: its GRU memory persists across the
trials of an episode, and the observations of Memory Sequence and Goal Sequence already carry
the RL^2 inputs (last reward and trial index; Memory Sequence also the last action and a
trial-start flag), plus the social channel of ``envs.gridworlds.social`` (a demonstrator's
symbol or body, and a visibility bit). Either social task works everywhere below.

- In context (``make_in_context_generation``): one agent is trained with noisy oracles whose
  visibility decays over the trials of an episode. Weights are then frozen. On one fixed task a
  population of copies plays an episode per generation; generation 0 watches a random
  demonstrator, generation k + 1 watches the selected trial of generation k's best member (by
  last-trial return) replayed.
- In weights (``make_in_weights_generation``): each generation trains fresh PPO agents while
  the previous generation's best recorded episodes are shown, visibility annealed 1 -> 0 over
  training. The demonstrators never see the learner, so replaying their recorded episodes is
  the same as having them act alongside it.

``run_generations`` runs either loop one generation at a time, vmapped over seeds, saving a
checkpoint after every generation and resuming from the last one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agents.checkpoint import Checkpointer
from agents.hparams import require, static
from agents.ppo import Policy, PPOConfig, make_ppo
from envs.gridworlds.social import SocialParams, demo_spec, trial_clock

__all__ = [
    "VISIBILITY",
    "InContextConfig",
    "InWeightsConfig",
    "Record",
    "make_in_context_generation",
    "make_in_weights_generation",
    "make_single_lifetime_block",
    "record_play",
    "run_generations",
    "select_demonstrations",
]


class Record(NamedTuple):
    """What a batch of agents did, trial by trial (trials counted over all lifetimes)."""

    trial_returns: jax.Array  # float32 [N, trials]
    trial_actions: jax.Array  # int32 [N, trials, demo_length]: demo_spec's "no action" if none


def record_play(
    policy: Policy,
    agent_params: Any,
    env: Any,
    env_params: Any,
    key: jax.Array,
    num_agents: int,
    lifetimes: int = 1,
    deterministic: bool = False,
) -> Record:
    """``num_agents`` copies of one agent each play ``lifetimes`` episodes of Memory Sequence
    or Goal Sequence (plain or social) in a row with their memory kept across them (a lifetime
    of ``lifetimes * num_trials`` trials), recording each trial's actions and return.
    """
    num_trials = env_params.num_trials
    length, none = demo_spec(env_params)  # actions per trial at most
    trials = lifetimes * num_trials
    k_reset, k_run = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(k_reset, num_agents), env_params
    )
    trial_ids, positions = jnp.arange(trials), jnp.arange(length)
    vmap_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def step(carry, key):
        memory, obs, state, first, episode, returns, actions = carry
        k_act, k_env = jax.random.split(key)
        memory, action = policy.act(agent_params, memory, obs, first, k_act, deterministic)
        trial, slot = trial_clock(state)  # [N] each
        trial = episode * num_trials + trial
        now = (trial_ids == trial[:, None]) & (episode < lifetimes)[:, None]  # [N, trials]
        here = now[:, :, None] & (positions == slot[:, None])[:, None, :]
        actions = jnp.where(here, action[:, None, None], actions)
        obs, state, reward, term, trunc, _ = vmap_step(
            jax.random.split(k_env, num_agents), state, action, env_params
        )
        returns = returns + jnp.where(now, reward[:, None], 0.0)
        episode = episode + (term | trunc)
        return (memory, obs, state, jnp.zeros_like(first), episode, returns, actions), None

    init = (
        policy.initial_carry(num_agents),
        obs,
        state,
        jnp.ones((num_agents,), bool),
        jnp.zeros((num_agents,), jnp.int32),
        jnp.zeros((num_agents, trials), jnp.float32),
        jnp.full((num_agents, trials, length), none, jnp.int32),
    )
    carry, _ = jax.lax.scan(step, init, jax.random.split(k_run, trials * length))
    return Record(carry[5], carry[6])


def select_demonstrations(
    actions: jax.Array, returns: jax.Array, num_demos: int
) -> tuple[jax.Array, jax.Array]:
    """The ``num_demos`` highest-return plays (later ones win ties).

    actions int32 [M, L], returns float32 [M] -> (demos [num_demos, L], returns).
    """
    order = returns + 1e-4 * jnp.arange(returns.shape[0]) / returns.shape[0]
    _, index = jax.lax.top_k(order, num_demos)
    return actions[index], returns[index]


# --------------------------------------------------------------------------- in context


@struct.dataclass
class InContextConfig:
    """Test-time generations of a frozen in-context learner."""

    generations: int = static(8)
    population: int = static(3)  # copies playing each generation; the best one demonstrates
    demo_from: str = static("last")  # the best member's "last" trial (reference) or "best" one
    deterministic: bool = static(False)

    def validate(self) -> None:
        require(self.generations >= 1, f"generations must be >= 1, got {self.generations}")
        require(self.population >= 1, f"population must be >= 1, got {self.population}")
        require(
            self.demo_from in ("last", "best"),
            f"demo_from must be 'last' or 'best', got {self.demo_from!r}",
        )


def make_in_context_generation(
    config: InContextConfig, policy: Policy, env: Any, env_params: Any
) -> Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Record]]:
    """``generation(agent_params, task, demo, key) -> (next_demo, record)`` on one task.

    task: from ``env.draw_task``; demo: int32 [demo_length] (``demo_spec``); record has
    [population, num_trials] returns. The population sees ``demo`` with visibility decaying
    over the trials (1 in the first, 0 in the last); the next demonstration is the best
    member's last (or best) trial.
    """
    config.validate()
    require(
        isinstance(env_params, SocialParams) and env_params.visibility_decay,
        "in-context generations need social task params (envs.gridworlds.social) with "
        "visibility_decay=True",
    )

    def generation(agent_params, task, demo, key):
        params = env.with_task(env_params, task).replace(demos=demo[None], visibility=1.0)
        record = record_play(
            policy, agent_params, env, params, key, config.population, 1, config.deterministic
        )
        best = jnp.argmax(record.trial_returns[:, -1])  # best member by last-trial return
        if config.demo_from == "last":
            trial = params.num_trials - 1
        else:  # its best trial, later trials winning ties
            trial = jnp.argmax(record.trial_returns[best] + 1e-4 * jnp.arange(params.num_trials))
        return record.trial_actions[best, trial], record

    return generation


# --------------------------------------------------------------------------- in weights


@struct.dataclass
class InWeightsConfig:
    """Train-time generations: fresh PPO agents learning alongside the previous generation."""

    ppo: PPOConfig = struct.field(default_factory=PPOConfig)  # one member's training run
    generations: int = static(5)
    population: int = static(3)  # agents trained per generation (and seed)
    num_demos: int = static(8)  # best recorded episodes of a generation shown to the next
    eval_episodes: int = static(32)  # episodes each member plays alone after training

    def validate(self) -> None:
        self.ppo.validate()
        require(self.ppo.recurrent, "in-weights accumulation needs recurrent PPO (ppo.recurrent)")
        for name in ("generations", "population", "num_demos", "eval_episodes"):
            require(getattr(self, name) >= 1, f"InWeightsConfig.{name} must be >= 1")
        require(
            self.num_demos <= self.population * self.eval_episodes,
            f"num_demos={self.num_demos} exceeds the population * eval_episodes = "
            f"{self.population * self.eval_episodes} episodes recorded per generation",
        )


#: Visibility schedules (at the first and the last update, linear between) for in-weights runs.
VISIBILITY = {"anneal": (1.0, 0.0), "one": (1.0, 1.0), "zero": (0.0, 0.0)}


def _check_in_weights_env(env_params: Any) -> None:
    require(
        isinstance(env_params, SocialParams)
        and not env_params.visibility_decay
        and env_params.demos is not None,
        "in-weights generations need a social task's in_weights_params(..., demos=...) "
        "(visibility_decay=False and a demos array to replace)",
    )


def make_in_weights_generation(
    config: InWeightsConfig, env: Any, env_params: Any
) -> Callable[..., tuple[jax.Array, dict]]:
    """``generation(key, env_params, demos, visibility) -> (next_demos, metrics)``.

    env_params: one lineage's (its fixed task); demos int32 [num_demos, demo_length];
    visibility float32 [2]: the demonstrators' visibility at the first and the last PPO update,
    linear between (``VISIBILITY``; (0, 0) for generation 0, which trains alone). Metrics:
    ``return_alone`` / ``return_social`` [population] (mean episode return playing alone /
    with the demonstrators visible), ``best_return`` [], ``train_return``
    [population, num_updates].
    """
    config.validate()
    _check_in_weights_env(env_params)
    cfg = config.ppo
    policy = make_ppo(cfg, env, env_params).policy

    def train_member(key, params, visibility):
        def update(rs, u):
            fraction = u / max(cfg.num_updates - 1, 1)
            visibility_u = visibility[0] + (visibility[1] - visibility[0]) * fraction
            return make_ppo(cfg, env, params.replace(visibility=visibility_u)).update(rs)

        rs = make_ppo(cfg, env, params).init(key)
        rs, metrics = jax.lax.scan(update, rs, jnp.arange(cfg.num_updates))
        return rs.train_state.params, metrics["return"]

    def play(agent_params, params, key):
        return record_play(policy, agent_params, env, params, key, config.eval_episodes)

    def generation(key, params, demos, visibility):
        params = params.replace(demos=demos)
        k_train, k_play = jax.random.split(key)
        members = jax.random.split(k_train, config.population)
        agents, curves = jax.vmap(train_member, in_axes=(0, None, None))(
            members, params, visibility
        )

        def play_both(agent, key):  # [2]: alone, then with the demonstrators visible
            return jax.vmap(lambda v, k: play(agent, params.replace(visibility=v), k))(
                jnp.array([0.0, 1.0]), jax.random.split(key)
            )

        both = jax.vmap(play_both)(agents, jax.random.split(k_play, config.population))
        alone, social = jax.tree.map(lambda x: x[:, 0], both), jax.tree.map(lambda x: x[:, 1], both)
        episodes = alone.trial_actions[:, :, 0].reshape(-1, demo_spec(params)[0])  # [P*E, L]
        returns = alone.trial_returns[:, :, 0].reshape(-1)
        next_demos, kept = select_demonstrations(episodes, returns, config.num_demos)
        metrics = {
            "return_alone": alone.trial_returns[..., 0].mean(axis=1),
            "return_social": social.trial_returns[..., 0].mean(axis=1),
            "best_return": kept[0],
            "train_return": curves,
        }
        return next_demos, metrics

    return generation


def make_single_lifetime_block(
    config: InWeightsConfig, env: Any, env_params: Any
) -> tuple[Callable, Callable]:
    """The equal-experience baseline: one agent, alone, trained for generations x steps.

    Returns ``(init(key) -> state, block(state, params) -> (state, metrics))``; ``block`` runs
    ``config.ppo.num_updates`` updates (one generation's worth), then evaluates alone, with
    the learning rate annealed over all generations' steps.
    """
    config.validate()
    _check_in_weights_env(env_params)
    long = config.ppo.replace(total_timesteps=config.ppo.total_timesteps * config.generations)
    alone = env_params.replace(visibility=0.0)
    ppo = make_ppo(long, env, alone)

    def block(rs, params):
        params = params.replace(visibility=0.0)
        update = make_ppo(long, env, params).update
        rs, metrics = jax.lax.scan(lambda s, _: update(s), rs, None, config.ppo.num_updates)
        key, k_eval = jax.random.split(rs.key)
        rs = rs._replace(key=key)
        record = record_play(
            ppo.policy, rs.train_state.params, env, params, k_eval, config.eval_episodes
        )
        return rs, {
            "return_alone": record.trial_returns[:, 0].mean(),
            "train_return": metrics["return"],
        }

    return ppo.init, block


# --------------------------------------------------------------------------- the loop


def run_generations(
    generation: Callable[[Any, int], tuple[Any, dict]],
    carry: Any,
    num_generations: int,
    directory: Any,
    config: dict,
    log: Callable[[int, dict], None] | None = None,
) -> tuple[Any, list[dict]]:
    """Run ``carry, metrics = generation(carry, g)`` for g = 0 .. num_generations - 1.

    After each generation the carry is checkpointed under ``directory/checkpoints`` and its
    metrics (arrays, turned into lists) appended to ``directory/generations.jsonl``; starting
    again with the same directory and config resumes after the last saved generation.
    ``generation`` must be deterministic in ``(carry, g)`` (derive keys with ``fold_in``) for
    a resumed run to equal an uninterrupted one. Returns the final carry and every
    generation's metrics.
    """
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(directory / "checkpoints", config)
    log_file = directory / "generations.jsonl"
    done = ckpt.latest_step() or 0
    lines = []
    if done:
        carry = ckpt.restore({"carry": carry}, done)["carry"]  # orbax saves no bare array
        lines = [json.loads(x) for x in log_file.read_text().splitlines() if x]
        lines = [m for m in lines if m["generation"] < done]
    log_file.write_text("".join(json.dumps(m) + "\n" for m in lines))
    for g in range(done, num_generations):
        carry, metrics = jax.block_until_ready(generation(carry, g))
        line = {"generation": g, **jax.tree.map(lambda x: np.asarray(x).tolist(), metrics)}
        with log_file.open("a") as f:
            f.write(json.dumps(line) + "\n")
        ckpt.save(g + 1, {"carry": carry})
        lines.append(line)
        if log is not None:
            log(g, line)
    return carry, lines
