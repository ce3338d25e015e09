"""Cultural accumulation (Cook et al. 2024, arXiv 2406.00392): generations of recurrent PPO
agents that build on the previous generation's play, in context and in weights.

The learner is ``agents.ppo``'s recurrent PPO, RL^2-style: its GRU memory persists across the
trials of an episode, and the observations of Memory Sequence and Goal Sequence already carry
the RL^2 inputs (last reward and trial index; Memory Sequence also the last action and a
trial-start flag), plus the social channel of ``envs.gridworlds.social`` (a demonstrator's
symbol or body, and a visibility bit). What this module asks of an env are its methods
``demo_spec``, ``trial_clock``, ``draw_task``, ``with_task`` and ``check_demonstrators``.

- Task settings (``MemoryTask``, ``GoalTask``): the social learner's, RL^2's and the in-weights
  env of each task, task instances and random demonstrations.
- In context: the social learner is a plain ``make_ppo`` agent trained with noisy oracles whose
  visibility decays over the trials of an episode. Weights are then frozen. On one fixed task a
  population of copies plays an episode per generation (``make_in_context_generation``;
  ``in_context_generations`` runs it for seeds x tasks); generation 0 watches a random
  demonstrator, generation k + 1 the selected trial of generation k's best member (by
  last-trial return) replayed. ``lifetime_returns`` plays the RL^2 baselines' lifetimes.
- In weights (``make_in_weights_lineage``, an ``agents.core.Agent`` whose ``update`` is one
  generation): each generation trains fresh PPO agents while the previous generation's best
  recorded episodes are shown, visibility annealed 1 -> 0 over training. The demonstrators
  never see the learner, so replaying their recorded episodes is the same as having them act
  alongside it. ``make_single_lifetime`` is the equal-experience baseline.

Generations run in ``experiments.runner.run_loop`` (one metrics line per generation,
checkpointed and resumable).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agents.core import Agent, Policy
from agents.hparams import require, static
from agents.ppo import PPOConfig, make_ppo
from envs.gridworlds.memory_sequence import MemorySequence
from envs.gridworlds.social import SocialGoalSequence, SocialMemorySequence

__all__ = [
    "TRAINED_VISIBILITY",
    "VISIBILITY",
    "GoalTask",
    "InContextConfig",
    "InWeightsConfig",
    "LineageState",
    "MemoryTask",
    "Record",
    "in_context_generations",
    "in_weights_ppo",
    "lifetime_returns",
    "make_in_context_generation",
    "make_in_weights_lineage",
    "make_single_lifetime",
    "record_play",
    "reference_ppo",
    "select_demonstrations",
]


# --------------------------------------------------------------------------- task settings


def _in_context_ppo() -> PPOConfig:
    """The in-context learners' PPO (Memory Sequence; Goal Sequence changes three fields)."""
    return PPOConfig(
        num_envs=32,
        num_steps=64,
        total_steps=300_000,
        update_epochs=2,
        num_minibatches=4,
        recurrent=True,
        hidden=(64,),
        embed=(64,),
        gru_hidden=128,
        lr=2e-3,
        ent_coef=0.02,
    )


def reference_ppo(task: MemoryTask | GoalTask, in_weights: bool = False) -> PPOConfig:
    """The reference's PPO on ``task`` (the paper preset). Memory Sequence: Dense 128 ->
    Dense 256 (leaky ReLU) -> GRU 256 -> heads 128-128; 16 envs x 128 steps, 8M steps, 2
    epochs x 8 minibatches, lr 2.5e-4, entropy 0.03. Goal Sequence: Dense 256 -> GRU 256 ->
    heads 64-64; 128 envs x 32 steps, 15M steps, lr 1e-5. In-weights (one generation): 1e5
    steps with 4 envs, 4 epochs x 4 minibatches, entropy 0.01."""
    ppo = PPOConfig(
        num_envs=16, num_steps=128, total_steps=8_000_000, update_epochs=2, num_minibatches=8,
        recurrent=True, hidden=(128, 128), embed=(128, 256), gru_hidden=256,
        activation="leaky_relu", lr=2.5e-4, ent_coef=0.03,
    )  # fmt: skip
    if in_weights:
        return ppo.replace(
            num_envs=4, total_steps=102_400, update_epochs=4, num_minibatches=4, ent_coef=0.01
        )
    if isinstance(task, GoalTask):
        return ppo.replace(
            num_envs=128, num_steps=32, total_steps=15_000_000, hidden=(64, 64), embed=(256,),
            activation="tanh", lr=1e-5,
        )  # fmt: skip
    return ppo


def in_weights_ppo() -> PPOConfig:
    """One in-weights generation's training of one agent: the reference's 1e5 steps."""
    short = {"num_envs": 16, "num_steps": 32, "total_steps": 102_400, "update_epochs": 4}
    return _in_context_ppo().replace(**short, gru_hidden=64, lr=3e-3, ent_coef=0.01)


@dataclasses.dataclass
class MemoryTask:
    """Memory Sequence: reproduce a hidden symbol sequence; the demonstrator's symbol is shown."""

    num_symbols: int = 3
    seq_len: int = 6

    name = "Memory Sequence"

    def social(self, num_trials: int, **social: Any) -> tuple[SocialMemorySequence, Any]:
        """The in-context social learner's env: a new sequence each episode, visibility
        decaying over the trials (unless ``social`` says otherwise)."""
        env = SocialMemorySequence()
        return env, env.in_context_params(self.num_symbols, self.seq_len, num_trials, **social)

    def rl2(self, num_trials: int) -> tuple[MemorySequence, Any]:
        """RL^2's env: plain Memory Sequence (no social channel)."""
        env = MemorySequence()
        return env, env.in_context_params(self.num_symbols, self.seq_len, num_trials)

    def in_weights(self, num_demos: int) -> tuple[SocialMemorySequence, Any]:
        """One fixed sequence, one trial, ``num_demos`` recorded demonstrators (placeholders
        that play nothing until replaced)."""
        env = SocialMemorySequence()
        demos = jnp.full((num_demos, self.seq_len), self.num_symbols, jnp.int32)
        return env, env.in_weights_params(0, self.num_symbols, self.seq_len, demos=demos)

    def draw_tasks(self, key: jax.Array, shape: tuple[int, ...], params: Any) -> jax.Array:
        """Task instances: sequences int32 [*shape, seq_len]."""
        return jax.random.randint(key, shape + (self.seq_len,), 0, self.num_symbols)

    def with_task(self, params: Any, task: jax.Array) -> Any:
        """``params`` (social or RL^2's plain ones) whose every episode plays ``task``."""
        return SocialMemorySequence.with_task(params, task)

    def random_demos(self, key: jax.Array, shape: tuple[int, ...], params: Any) -> jax.Array:
        """Random symbols, int32 [*shape, seq_len]: what generation 0 watches."""
        return jax.random.randint(key, shape + (self.seq_len,), 0, self.num_symbols)

    def in_context_ppo(self) -> PPOConfig:
        """The in-context learners' PPO settings on this task."""
        return _in_context_ppo()

    def describe(self) -> str:
        return f"{self.num_symbols} symbols, length {self.seq_len}"


@dataclasses.dataclass
class GoalTask:
    """Goal Sequence: visit goals in a hidden order; the demonstrator's body is shown."""

    size: int = 4  # CPU scale (the reference: 7x7, 50 steps per trial)
    num_goals: int = 3
    trial_length: int = 16
    view_size: int = 5
    oracle_accuracy: float = 0.8  # the noisy oracle's unscrambled moves (reference: 80%)

    name = "Goal Sequence"

    def _kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def social(self, num_trials: int, **social: Any) -> tuple[SocialGoalSequence, Any]:
        """The in-context social learner's env: a new layout each episode, visibility
        decaying over the trials (unless ``social`` says otherwise)."""
        env = SocialGoalSequence()
        return env, env.in_context_params(num_trials, **{**self._kwargs(), **social})

    def rl2(self, num_trials: int) -> tuple[SocialGoalSequence, Any]:
        """RL^2's env: the social env with the demonstrator never visible (its channel is
        constant zero; it stands still, which spares the oracle's planning), which also lets
        a task instance be fixed for whole lifetimes."""
        env, params = self.social(num_trials, visibility=0.0, visibility_decay=False)
        length, still = env.demo_spec(params)
        return env, params.replace(demos=jnp.full((1, length), still, jnp.int32))

    def in_weights(self, num_demos: int) -> tuple[SocialGoalSequence, Any]:
        """One fixed layout, one trial, ``num_demos`` recorded demonstrators (placeholders
        that stand still until replaced)."""
        env = SocialGoalSequence()
        params = env.in_weights_params(0, **self._kwargs())
        length, still = env.demo_spec(params)
        return env, params.replace(demos=jnp.full((num_demos, length), still, jnp.int32))

    def draw_tasks(self, key: jax.Array, shape: tuple[int, ...], params: Any) -> Any:
        """Task instances: initial states (layout, start, order), batched [*shape]."""
        keys = jax.random.split(key, int(np.prod(shape)))
        states = jax.vmap(SocialGoalSequence.draw_task, in_axes=(0, None))(keys, params)
        return jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), states)

    def with_task(self, params: Any, task: Any) -> Any:
        """``params`` whose every episode starts from ``task``."""
        return SocialGoalSequence.with_task(params, task)

    def random_demos(self, key: jax.Array, shape: tuple[int, ...], params: Any) -> jax.Array:
        """Random moves, int32 [*shape, trial_length]: what generation 0 watches."""
        env = SocialGoalSequence()
        length, num_actions = env.demo_spec(params)[0], env.action_space(params).n
        return jax.random.randint(key, shape + (length,), 0, num_actions)

    def in_context_ppo(self) -> PPOConfig:
        """The in-context learners' PPO settings on this task: lr 1e-3 / entropy 0.05 stayed
        in the goal-avoidance optimum for 3M steps; with these the first seed started
        following at about 2M steps."""
        return _in_context_ppo().replace(total_steps=6_144_000, lr=3e-4, ent_coef=0.1)

    def describe(self) -> str:
        return (
            f"{self.size}x{self.size}, {self.num_goals} goals, {self.trial_length} steps per trial"
        )


def _require_social(env: Any, params: Any, in_context: bool) -> None:
    """A ValueError unless ``env`` is a social env whose ``params`` suit the setting."""
    check = getattr(env, "check_demonstrators", None)
    require(
        check is not None,
        f"{type(env).__name__} has no social channel; cultural accumulation needs an env of "
        "envs.gridworlds.social (SocialMemorySequence, SocialGoalSequence)",
    )
    check(params, in_context)


# --------------------------------------------------------------------------- recording


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
    or Goal Sequence (plain or social) in a row, their memory starting from
    ``policy.initial_carry`` and kept across episodes (a lifetime of ``lifetimes * num_trials``
    trials), recording each trial's actions and return.
    """
    num_trials = env_params.num_trials
    length, none = env.demo_spec(env_params)  # actions per trial at most
    trials = lifetimes * num_trials
    k_reset, k_run = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(k_reset, num_agents), env_params
    )
    trial_ids, positions = jnp.arange(trials), jnp.arange(length)
    vmap_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def step(carry, key):
        memory, obs, state, episode, returns, actions = carry
        k_act, k_env = jax.random.split(key)
        memory, action = policy.act(agent_params, memory, obs, k_act, deterministic)
        trial, slot = env.trial_clock(state)  # [N] each
        trial = episode * num_trials + trial
        now = (trial_ids == trial[:, None]) & (episode < lifetimes)[:, None]  # [N, trials]
        here = now[:, :, None] & (positions == slot[:, None])[:, None, :]
        actions = jnp.where(here, action[:, None, None], actions)
        obs, state, reward, term, trunc, _ = vmap_step(
            jax.random.split(k_env, num_agents), state, action, env_params
        )
        returns = returns + jnp.where(now, reward[:, None], 0.0)
        episode = episode + (term | trunc)
        return (memory, obs, state, episode, returns, actions), None

    init = (
        policy.initial_carry(num_agents),
        obs,
        state,
        jnp.zeros((num_agents,), jnp.int32),
        jnp.zeros((num_agents, trials), jnp.float32),
        jnp.full((num_agents, trials, length), none, jnp.int32),
    )
    carry, _ = jax.lax.scan(step, init, jax.random.split(k_run, trials * length))
    return Record(carry[4], carry[5])


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

#: Social learners' training: the headline (visibility decaying over the trials), ablations.
TRAINED_VISIBILITY = {
    "decay": {},
    "fixed_1": {"visibility": 1.0, "visibility_decay": False},
    "fixed_0": {"visibility": 0.0, "visibility_decay": False},
}


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

    task: from ``env.draw_task``; demo: int32 [demo_length] (``env.demo_spec``); record has
    [population, num_trials] returns. The population sees ``demo`` with visibility decaying
    over the trials (1 in the first, 0 in the last); the next demonstration is the best
    member's last (or best) trial.
    """
    config.validate()
    _require_social(env, env_params, in_context=True)

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


def in_context_generations(
    config: InContextConfig,
    policy: Policy,
    agent_params: Any,
    env: Any,
    env_params: Any,
    tasks: Any,
    key: jax.Array,
) -> Callable[[jax.Array, int, int], tuple[jax.Array, dict[str, np.ndarray]]]:
    """Generations of every (seed, task) lineage of frozen learners ``agent_params`` [S] on
    ``tasks`` [S, N]: ``run(demos, start, n) -> (demos, metrics)`` plays generations
    ``start .. start + n - 1`` (``experiments.runner.run_loop``'s step), generation g with
    ``fold_in(key, g)``; demos int32 [S, N, demo_length] are what the next generation watches.

    Metrics [n, ...]: ``trial_returns`` [n, S, num_trials] (mean over tasks and members) and
    ``best_last_trial`` [n, S] (the best member's last trial, mean over tasks).
    """
    generation = make_in_context_generation(config, policy, env, env_params)
    batched = jax.vmap(jax.vmap(generation, in_axes=(None, 0, 0, 0)))

    @jax.jit
    def one(agent_params, tasks, demos, key):
        keys = jax.random.split(key, demos.shape[0] * demos.shape[1])
        demos, record = batched(agent_params, tasks, demos, keys.reshape(demos.shape[:2]))
        returns = record.trial_returns  # [S, N, population, T]
        return demos, {
            "trial_returns": returns.mean(axis=(1, 2)),
            "best_last_trial": returns[..., -1].max(axis=2).mean(axis=1),
        }

    def run(demos, start, n):
        lines = []
        for g in range(start, start + n):
            demos, metrics = one(agent_params, tasks, demos, jax.random.fold_in(key, g))
            lines.append(metrics)
        return demos, jax.tree.map(lambda *x: np.stack(x), *lines)

    return run


def lifetime_returns(
    task: MemoryTask | GoalTask,
    policy: Policy,
    agent_params: Any,
    env: Any,
    env_params: Any,
    tasks: Any,
    key: jax.Array,
    num_agents: int,
    lifetimes: int,
) -> np.ndarray:
    """Mean trial return over ``tasks`` [S, N] and ``num_agents`` copies of each seed's agent
    (``agent_params`` [S]), each playing ``lifetimes`` episodes of its task in a row with its
    memory kept: [S, lifetimes * num_trials] (the RL^2 baselines' equal experience)."""

    def one(agent, seed_tasks, key):
        def play(t, key):
            params = task.with_task(env_params, t)
            r = record_play(policy, agent, env, params, key, num_agents, lifetimes)
            return r.trial_returns.mean(axis=0)  # [trials]

        keys = jax.random.split(key, jax.tree.leaves(seed_tasks)[0].shape[0])
        return jax.vmap(play)(seed_tasks, keys).mean(axis=0)

    keys = jax.random.split(key, jax.tree.leaves(tasks)[0].shape[0])
    return np.asarray(jax.jit(jax.vmap(one))(agent_params, tasks, keys))


# --------------------------------------------------------------------------- in weights


@struct.dataclass
class InWeightsConfig:
    """Train-time generations: fresh PPO agents learning alongside the previous generation."""

    ppo: PPOConfig = struct.field(default_factory=in_weights_ppo)  # one member's training run
    generations: int = static(8)  # the reference's
    population: int = static(2)  # agents trained per generation (and lineage)
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


class LineageState(NamedTuple):
    """An in-weights lineage between generations."""

    params: Any  # the last generation's best member's network (zeros, a uniform policy, before)
    demos: jax.Array  # int32 [num_demos, demo_length]: what the next generation watches
    generation: jax.Array  # int32 []: generations done
    key: jax.Array


def make_in_weights_lineage(
    config: InWeightsConfig,
    env: Any,
    env_params: Any,
    visibility: tuple[float, float] | jax.Array = VISIBILITY["anneal"],
) -> Agent:
    """One in-weights lineage on the fixed task of ``env_params`` as an ``agents.core.Agent``.

    ``update`` (= ``learn``: a lineage learns a generation at a time) is one generation:
    ``config.population`` fresh PPO agents train while the previous generation's
    demonstrations are shown, visibility going from ``visibility[0]`` at the first PPO update
    to ``visibility[1]`` at the last (``VISIBILITY``; may be traced, to vmap conditions);
    generation 0 trains alone. Then each member plays ``eval_episodes`` episodes alone and as
    many with the demonstrators visible, and the ``num_demos`` best episodes alone become the
    next demonstrations. Metrics: ``return_alone`` / ``return_social`` [population] (mean
    episode return), ``best_return`` [] (of the demonstrations kept), ``train_return``
    [population, ppo.num_updates]. ``policy_params`` is the last generation's best member's
    (by return alone; zeros, a uniform policy, before the first). ``num_updates`` =
    generations; ``steps_per_update`` counts one member's training env steps (the population
    trains ``population`` times as many).
    """
    config.validate()
    _require_social(env, env_params, in_context=False)
    cfg = config.ppo
    ppo = make_ppo(cfg, env, env_params)
    length, none = env.demo_spec(env_params)
    visibility = jnp.asarray(visibility, jnp.float32)

    def train_member(key, params, schedule):
        def update(rs, u):
            fraction = u / max(cfg.num_updates - 1, 1)
            visibility_u = schedule[0] + (schedule[1] - schedule[0]) * fraction
            return make_ppo(cfg, env, params.replace(visibility=visibility_u)).update(rs)

        rs = make_ppo(cfg, env, params.replace(visibility=schedule[0])).init(key)
        rs, metrics = jax.lax.scan(update, rs, jnp.arange(cfg.num_updates))
        return ppo.policy_params(rs), metrics["return"]

    def play(agent_params, params, key):
        return record_play(ppo.policy, agent_params, env, params, key, config.eval_episodes)

    def init(key: jax.Array) -> LineageState:
        shapes = jax.eval_shape(lambda k: ppo.policy_params(ppo.init(k)), key)  # no compile
        params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        demos = jnp.full((config.num_demos, length), none, jnp.int32)
        return LineageState(params, demos, jnp.int32(0), key)

    def update(state: LineageState) -> tuple[LineageState, dict]:
        key, k_train, k_play = jax.random.split(state.key, 3)
        params = env_params.replace(demos=state.demos)
        schedule = jnp.where(state.generation > 0, visibility, 0.0)  # generation 0: alone
        members = jax.random.split(k_train, config.population)
        agents, curves = jax.vmap(train_member, in_axes=(0, None, None))(members, params, schedule)

        def play_both(agent, key):  # [2]: alone, then with the demonstrators visible
            return jax.vmap(lambda v, k: play(agent, params.replace(visibility=v), k))(
                jnp.array([0.0, 1.0]), jax.random.split(key)
            )

        both = jax.vmap(play_both)(agents, jax.random.split(k_play, config.population))
        alone, social = jax.tree.map(lambda x: x[:, 0], both), jax.tree.map(lambda x: x[:, 1], both)
        episodes = alone.trial_actions[:, :, 0].reshape(-1, length)  # [P*E, L]
        returns = alone.trial_returns[:, :, 0].reshape(-1)
        next_demos, kept = select_demonstrations(episodes, returns, config.num_demos)
        return_alone = alone.trial_returns[..., 0].mean(axis=1)  # [P]
        best = jax.tree.map(lambda x: x[jnp.argmax(return_alone)], agents)
        metrics = {
            "return_alone": return_alone,
            "return_social": social.trial_returns[..., 0].mean(axis=1),
            "best_return": kept[0],
            "train_return": curves,
        }
        return LineageState(best, next_demos, state.generation + 1, key), metrics

    return Agent(
        ppo.policy,
        init,
        update,
        update,
        lambda state: state.params,
        num_updates=config.generations,
        steps_per_update=cfg.num_updates * cfg.batch_size,
    )


class SingleLifetimeState(NamedTuple):
    """The single-lifetime baseline: its PPO run and the evaluations' key."""

    ppo: Any
    key: jax.Array


def make_single_lifetime(config: InWeightsConfig, env: Any, env_params: Any) -> Agent:
    """The equal-experience baseline on the fixed task of ``env_params``: one agent, alone,
    trained for generations x one generation's steps, as an ``agents.core.Agent``.

    ``learn`` is one PPO update; ``update`` is one generation's worth
    (``config.ppo.num_updates``) of them, the learning rate annealed over all generations,
    then ``eval_episodes`` episodes alone. Metrics: ``return_alone`` [], ``train_return``
    [ppo.num_updates]. ``num_updates`` = generations, ``steps_per_update`` in env steps.
    """
    config.validate()
    _require_social(env, env_params, in_context=False)
    long = config.ppo.replace(total_steps=config.ppo.total_steps * config.generations)
    alone = env_params.replace(visibility=0.0)
    ppo = make_ppo(long, env, alone)

    def init(key: jax.Array) -> SingleLifetimeState:
        k_ppo, k_eval = jax.random.split(key)
        return SingleLifetimeState(ppo.init(k_ppo), k_eval)

    def learn(state: SingleLifetimeState) -> tuple[SingleLifetimeState, dict]:
        rs, metrics = ppo.learn(state.ppo)
        return state._replace(ppo=rs), metrics

    def update(state: SingleLifetimeState) -> tuple[SingleLifetimeState, dict]:
        rs, metrics = jax.lax.scan(
            lambda s, _: ppo.update(s), state.ppo, None, config.ppo.num_updates
        )
        key, k_eval = jax.random.split(state.key)
        record = record_play(
            ppo.policy, ppo.policy_params(rs), env, alone, k_eval, config.eval_episodes
        )
        return SingleLifetimeState(rs, key), {
            "return_alone": record.trial_returns[:, 0].mean(),
            "train_return": metrics["return"],
        }

    return Agent(
        ppo.policy,
        init,
        learn,
        update,
        lambda state: ppo.policy_params(state.ppo),
        num_updates=config.generations,
        steps_per_update=config.ppo.num_updates * config.ppo.batch_size,
    )
