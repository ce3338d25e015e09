"""Continual offline RL over a task sequence: TD3+BC learners that fine-tune, train jointly,
regularise (EWC), replay random or model-selected experience, or do OER (Gai et al., 2023).

    learner = make_continual(config, datasets, env, task_params, ref_scores)   # an Agent
    state, metrics = jax.jit(learner.train)(key)          # metrics["score"]: R [T, T]
    state, metrics = jax.jit(jax.vmap(learner.train))(keys)                     # many seeds
    params = learner.policy_params(state)                 # {"actor", "head"}: the last task's
    carry, action = learner.policy.act({**params, "head": j}, (), env_obs, key)  # task j's head
    buffer_distances(learner, states, env, task_params, datasets)  # per seed: buffer MMD

Tasks arrive one after another with no environment interaction. One ``update`` is one task:
``steps_per_task`` critic steps on its dataset (one ``lax.scan``), a greedy evaluation on every
task of the sequence (row ``t`` of the normalised return matrix R), then what the method keeps
for later tasks. ``config.method``:

- ``finetune``: TD3+BC on the new task only (the lower bound); ``scratch``: the same from fresh
  networks at every task (single-task learners: forward transfer's reference);
- ``joint``: TD3+BC on every task seen so far, all of its data (the upper bound);
- ``ewc``: fine-tuning plus ``ewc_weight / 2 * sum F (theta - theta*)^2`` on actor and critic,
  F the summed diagonal empirical Fisher of each past task's losses, theta* the last task's;
- ``replay``: fine-tuning plus the TD3+BC losses on a replay buffer of ``buffer_size``
  transitions per past task (weight ``replay_weight``), chosen by ``config.selection``;
- ``oer``: OER. The learning policy trains on the new task with TD3+BC alone; a clone policy
  (evaluated and exported) regresses onto the learning policy's actions on new-task states and
  onto the stored old-policy actions on replayed states (dual behaviour cloning); the critic's
  Q on replayed (state, stored action) pairs is anchored to the value stored with them.

``selection``: ``random`` (uniform without replacement) or ``mbes`` (model-based experience
selection, ``agents.dynamics.select_mbes``): a 5-member probabilistic dynamics ensemble is fit
to the task; ``num_chains`` chains start at the dataset's episode starts; at state s the policy
acts, a random member predicts s', and among the ``num_neighbours`` nearest dataset transitions
to s the chain takes the one whose next state is nearest the prediction when the model is
confident (its predictive variance below ``variance_ratio`` times the neighbours' next-state
variance), else the dataset's own transition; it steps to that transition's successor (a chain
that reaches an episode end or a transition already kept restarts at an episode start) until the
buffer is full.
``heads="multi"`` gives actor, clone and critic one output layer per task (task id known).
Observations are normalised with the first task's statistics, kept for the whole sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from agents import offline
from agents.core import Agent, Policy, no_carry, policy_spec
from agents.dynamics import DynamicsConfig, make_dynamics, select_mbes
from agents.evaluation import evaluate, mmd, sq_distances
from agents.hparams import require, require_fields, static, sweepable
from agents.networks import MLP, dense
from agents.replay import Transition
from agents.replay.datasets import collect
from envs.wrappers import Normalizer

__all__ = [
    "METHODS",
    "ContinualConfig",
    "ContinualState",
    "TaskSequence",
    "buffer_distances",
    "continual_policy",
    "make_continual",
    "prepare_sequence",
    "select_random",
]

METHODS = ("finetune", "scratch", "joint", "ewc", "replay", "oer")
SELECTIONS = ("random", "mbes")


@struct.dataclass
class ContinualConfig:
    """Continual-learner settings (the reference's values unless noted)."""

    method: str = static("oer")  # one of METHODS
    selection: str = static("mbes")  # replay and oer: "random" or "mbes"
    heads: str = static("single")  # or "multi": one output layer per task
    steps_per_task: int = static(150_000)  # critic gradient steps per task
    batch_size: int = static(1024)
    hidden: tuple[int, ...] = static((256, 256))
    policy_freq: int = static(2)  # critic steps per actor (and target, clone) step
    clone_steps: int = static(1)  # OER: clone steps per actor step (the reference: 1)
    buffer_size: int = static(1_000)  # transitions kept per past task (reference: 1k or 10k)
    num_neighbours: int = static(64)
    num_chains: int = static(10)  # MBES chains run together
    fisher_samples: int = static(1_024)  # EWC: per-sample gradients per task
    eval_episodes: int = static(10)  # per task after every task
    dynamics: DynamicsConfig = static(DynamicsConfig())
    actor_lr: float = sweepable(3e-4)
    critic_lr: float = sweepable(3e-4)
    gamma: float = sweepable(0.99)
    tau: float = sweepable(0.005)
    alpha: float = sweepable(2.5)  # TD3+BC's weight of Q against behaviour cloning
    policy_noise: float = sweepable(0.2)
    noise_clip: float = sweepable(0.5)
    replay_weight: float = sweepable(1.0)  # reference sweep: 3, 1, 0.3
    ewc_weight: float = sweepable(100.0)
    variance_ratio: float = sweepable(2.0)  # MBES: model confident below this x neighbours'

    @property
    def replays(self) -> bool:
        return self.method in ("replay", "oer")

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        require(self.method in METHODS, f"method={self.method!r}: choose one of {METHODS}")
        require(self.selection in SELECTIONS, f"selection={self.selection!r}: one of {SELECTIONS}")
        require(self.heads in ("single", "multi"), f"heads={self.heads!r}: single or multi")
        for name in ("steps_per_task", "batch_size", "policy_freq", "num_neighbours"):
            require(getattr(self, name) >= 1, f"ContinualConfig.{name} must be >= 1")
        for name in ("num_chains", "fisher_samples", "clone_steps"):
            require(getattr(self, name) >= 1, f"ContinualConfig.{name} must be >= 1")
        require(self.eval_episodes >= 0, "ContinualConfig.eval_episodes must be >= 0")
        require(
            not self.replays or self.buffer_size >= 1,
            f"buffer_size={self.buffer_size}: method {self.method!r} replays, so keep >= 1 "
            "transition per task (or use method='finetune')",
        )
        require(
            self.steps_per_task % self.policy_freq == 0,
            f"steps_per_task={self.steps_per_task} must be a multiple of policy_freq="
            f"{self.policy_freq}",
        )
        self.dynamics.validate()
        positive = (lambda v: v > 0, "> 0")
        require_fields(
            self,
            {
                "actor_lr": positive,
                "critic_lr": positive,
                "gamma": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
                "tau": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
                "alpha": (lambda v: v >= 0, ">= 0"),
                "policy_noise": (lambda v: v >= 0, ">= 0"),
                "noise_clip": (lambda v: v >= 0, ">= 0"),
                "replay_weight": (lambda v: v >= 0, ">= 0"),
                "ewc_weight": (lambda v: v >= 0, ">= 0"),
                "variance_ratio": positive,
            },
        )


class TaskSequence(NamedTuple):
    """The tasks' datasets in the learner's units, padded to the largest: [T, N, ...]."""

    transitions: Transition  # [T, N]: normalised obs, actions in [-1, 1]
    sizes: jax.Array  # [T] int32: valid rows per task
    starts: jax.Array  # [T, N] bool: episode starts (valid rows only)
    obs: Normalizer  # the first task's observation statistics
    action_low: np.ndarray  # [act_dim]
    action_high: np.ndarray

    def policy_units(self) -> dict[str, list[float]]:
        """A policy builder's keyword arguments for the env's units (JSON)."""
        return offline.policy_units(self.obs, self.action_low, self.action_high)


def prepare_sequence(
    datasets: Sequence[Transition],
    env: Any,
    task_params: Sequence[Any],
    names: Sequence[str] | None = None,
) -> TaskSequence:
    """Flat [N_t] datasets, one per task (each checked against ``env`` with its params) ->
    a ``TaskSequence``. Errors name the task."""
    names = list(names) if names is not None else [f"task {i}" for i in range(len(datasets))]
    require(len(datasets) >= 1, "the task sequence is empty; give at least one dataset")
    require(
        len(datasets) == len(task_params) == len(names),
        f"{len(datasets)} datasets, {len(task_params)} task params and {len(names)} names: "
        "give one of each per task",
    )
    checked = []
    for data, params, name in zip(datasets, task_params, names):
        require(data is not None, f"task {name!r} has no dataset; give one per task, in order")
        try:
            checked.append(offline.check_dataset(data, env, params))
        except ValueError as err:
            raise ValueError(f"task {name!r}: {err}") from err
    first = checked[0]
    for data, name in zip(checked[1:], names[1:]):
        for field in ("obs", "action"):
            a, b = getattr(first, field).shape[1:], getattr(data, field).shape[1:]
            require(
                a == b,
                f"task {name!r} has {field} of shape {b} but task {names[0]!r} has {a}: every "
                "task of a sequence must share the observation and action spaces (one robot)",
            )
    low, high = offline.action_bounds(env, task_params[0])
    obs = Normalizer.fit(first.obs, eps=offline.OBS_STD_EPS)
    size = max(d.reward.shape[0] for d in checked)

    def units(d: Transition) -> Transition:
        pad = lambda x: np.concatenate([x, np.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)])
        action = np.clip(2.0 * (d.action - low) / (high - low) - 1.0, -1.0, 1.0)
        scaled = Transition(
            np.asarray(obs.normalize(d.obs)), action, d.reward,
            np.asarray(obs.normalize(d.next_obs)), d.terminated, d.truncated,
        )  # fmt: skip
        return jax.tree.map(pad, scaled)

    sizes = np.array([d.reward.shape[0] for d in checked], np.int32)
    padded = [units(d) for d in checked]
    starts = []
    for d, n in zip(padded, sizes):
        done = d.terminated | d.truncated
        start = np.concatenate([[True], done[:-1]]) & (np.arange(size) < n)
        starts.append(start)
    stacked = jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *padded)
    return TaskSequence(stacked, jnp.asarray(sizes), jnp.asarray(np.stack(starts)), obs, low, high)


class HeadedActor(nn.Module):
    """obs [..., D], head [...] -> action [..., A] in (-1, 1) from that head's output layer."""

    action_dim: int
    hidden: tuple[int, ...]
    heads: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array, head: jax.Array) -> jax.Array:
        out = dense(self.heads * self.action_dim, scale=1.0)(MLP(self.hidden, "relu")(obs))
        out = out.reshape(*out.shape[:-1], self.heads, self.action_dim)
        head = jnp.broadcast_to(head, obs.shape[:-1])[..., None, None]
        return jnp.tanh(jnp.take_along_axis(out, head, axis=-2)[..., 0, :])


class HeadedCritic(nn.Module):
    """Q(obs [..., D], action [..., A]) [...] from head ``head`` [...]."""

    hidden: tuple[int, ...]
    heads: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array, head: jax.Array) -> jax.Array:
        x = MLP(self.hidden, "relu")(jnp.concatenate([obs, action], -1))
        out = dense(self.heads, scale=1.0)(x)
        head = jnp.broadcast_to(head, obs.shape[:-1])[..., None]
        return jnp.take_along_axis(out, head, axis=-1)[..., 0]


class TwinCritic(nn.Module):
    """Two independent ``HeadedCritic``s: q [2, ...]."""

    hidden: tuple[int, ...]
    heads: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array, head: jax.Array) -> jax.Array:
        twin = nn.vmap(
            HeadedCritic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twin(self.hidden, self.heads)(obs, action, head)


def continual_policy(units: dict[str, list[float]], hidden: tuple[int, ...], heads: int) -> Policy:
    """The continual learner's deterministic actor in the env's units; ``params`` are
    ``{"actor": ..., "head": task id}`` (the head is ignored with one head)."""
    normalize, to_env = offline.env_units(**units)
    actor = HeadedActor(len(units["action_low"]), tuple(hidden), heads)

    def act(params, carry, env_obs, key, deterministic=False):
        head = jnp.clip(jnp.asarray(params["head"], jnp.int32), 0, heads - 1)
        return carry, to_env(actor.apply(params["actor"], normalize(env_obs), head))

    spec = policy_spec(continual_policy, units=units, hidden=tuple(hidden), heads=heads)
    return Policy(act, no_carry, spec)


class Buffer(NamedTuple):
    """Kept transitions of past tasks: ``buffer_size`` slots per task, [T * buffer_size]."""

    data: Transition
    task: jax.Array  # int32: the task each transition came from
    action: jax.Array  # [.., A] the old policy's action at obs (OER's clone target)
    q: jax.Array  # [.., 2] the twin critics' values of (obs, action) when stored (OER's anchor)
    filled: jax.Array  # [] int32: valid slots (the first ones)


class ContinualState(NamedTuple):
    actor: TrainState
    critic: TrainState
    target_actor: Any
    target_critic: Any
    clone: TrainState  # OER's evaluated policy (carried, untrained, by the other methods)
    buffer: Buffer
    fisher: Any  # EWC: summed diagonal Fisher of (actor, critic) params (else ())
    anchor: Any  # EWC: (actor, critic) params after the last task (else ())
    task: jax.Array  # [] int32: tasks learned
    key: jax.Array


def select_random(key: jax.Array, size: jax.Array, capacity: int, num: int) -> jax.Array:
    """``num`` distinct indices among the first ``size`` of ``capacity`` rows: [num] int32."""
    noise = jax.random.uniform(key, (capacity,))
    return jax.lax.top_k(-jnp.where(jnp.arange(capacity) < size, noise, jnp.inf), num)[1]


def make_continual(
    config: ContinualConfig,
    datasets: Sequence[Transition],
    env: Any,
    task_params: Sequence[Any],
    ref_scores: Sequence[tuple[float, float]] | None = None,
    names: Sequence[str] | None = None,
) -> Agent:
    """The continual learner on ``datasets`` (one flat [N_t] per task, task ``t`` evaluated in
    ``env`` with ``task_params[t]``); ``ref_scores`` (random, expert) per task normalise R."""
    config.validate()
    seq = prepare_sequence(datasets, env, task_params, names)
    names = list(names) if names is not None else [f"task {i}" for i in range(len(datasets))]
    num_tasks = len(datasets)
    for n, name in zip(np.asarray(seq.sizes), names):
        require(
            not config.replays or config.buffer_size <= n,
            f"task {name!r} has {n} transitions, fewer than buffer_size={config.buffer_size}; "
            "lower buffer_size or give the task more data",
        )
        require(
            config.selection != "mbes" or config.num_neighbours <= n,
            f"task {name!r} has {n} transitions, fewer than num_neighbours="
            f"{config.num_neighbours}; lower num_neighbours",
        )
    if ref_scores is None:
        refs = np.array([[0.0, 100.0]] * num_tasks, np.float32)  # scores = returns
    else:
        shape = np.shape(np.asarray(ref_scores, dtype=object))
        require(
            shape == (num_tasks, 2),
            f"ref_scores: give one (random, expert) pair of returns per task, shape "
            f"[{num_tasks}, 2], got shape {list(shape)}",
        )
        for pair in ref_scores:
            offline.check_ref_scores(tuple(pair))
        refs = np.asarray(ref_scores, np.float32)
    stacked_params = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *task_params)
    obs_dim, act_dim = seq.transitions.obs.shape[-1], seq.transitions.action.shape[-1]
    episode_steps = max(int(p.max_steps_in_episode) for p in task_params)
    heads = num_tasks if config.heads == "multi" else 1
    head_of = lambda task: task if heads > 1 else jnp.zeros_like(task)
    policy = continual_policy(seq.policy_units(), config.hidden, heads)
    actor = HeadedActor(act_dim, tuple(config.hidden), heads)
    critic = TwinCritic(tuple(config.hidden), heads)
    dynamics = make_dynamics(config.dynamics, obs_dim, act_dim)
    capacity = num_tasks * config.buffer_size if config.replays else 1
    batch = config.batch_size

    def networks(key: jax.Array) -> tuple[TrainState, TrainState]:
        k_actor, k_critic = jax.random.split(key)
        obs, action, head = jnp.zeros((obs_dim,)), jnp.zeros((act_dim,)), jnp.int32(0)
        a = TrainState.create(
            apply_fn=actor.apply,
            params=actor.init(k_actor, obs, head),
            tx=optax.adam(config.actor_lr),
        )
        c = TrainState.create(
            apply_fn=critic.apply,
            params=critic.init(k_critic, obs, action, head),
            tx=optax.adam(config.critic_lr),
        )
        return a, c

    def init(key: jax.Array) -> ContinualState:
        key, k_nets, k_clone = jax.random.split(key, 3)
        a, c = networks(k_nets)
        clone = a.replace(params=actor.init(k_clone, jnp.zeros((obs_dim,)), jnp.int32(0)))
        rows = lambda x: jnp.zeros((capacity, *x.shape[2:]), x.dtype)
        buffer = Buffer(
            jax.tree.map(rows, seq.transitions),
            jnp.zeros((capacity,), jnp.int32),
            jnp.zeros((capacity, act_dim)),
            jnp.zeros((capacity, 2)),
            jnp.int32(0),
        )
        copy = jax.tree.map(jnp.copy, (a.params, c.params))
        ewc = config.method == "ewc"  # only EWC carries a Fisher and an anchor
        fisher = jax.tree.map(jnp.zeros_like, copy) if ewc else ()
        anchor = copy if ewc else ()
        task = jnp.int32(0)
        return ContinualState(a, c, copy[0], copy[1], clone, buffer, fisher, anchor, task, key)

    def td_loss(params, state, data: Transition, head, key) -> tuple[jax.Array, jax.Array]:
        noise = jnp.clip(
            config.policy_noise * jax.random.normal(key, data.action.shape),
            -config.noise_clip,
            config.noise_clip,
        )
        next_action = jnp.clip(actor.apply(state.target_actor, data.next_obs, head) + noise, -1, 1)
        next_q = critic.apply(state.target_critic, data.next_obs, next_action, head).min(0)
        not_terminated = 1.0 - data.terminated.astype(jnp.float32)
        target = jax.lax.stop_gradient(data.reward + config.gamma * not_terminated * next_q)
        q = critic.apply(params, data.obs, data.action, head)  # [2, B]
        return jnp.square(q - target).mean(-1).sum(), q.mean()

    def td3_bc_loss(params, critic_params, data: Transition, head) -> tuple[jax.Array, jax.Array]:
        pi = actor.apply(params, data.obs, head)
        q = critic.apply(critic_params, data.obs, pi, head)[0]
        lmbda = config.alpha / jax.lax.stop_gradient(jnp.abs(q).mean())
        bc = jnp.square(pi - data.action).mean()
        return -lmbda * q.mean() + bc, bc

    def ewc_penalty(params, fisher, anchor):
        terms = jax.tree.map(lambda p, f, a: (f * jnp.square(p - a)).sum(), params, fisher, anchor)
        return 0.5 * config.ewc_weight * sum(jax.tree.leaves(terms))

    def sample(state: ContinualState, key: jax.Array) -> tuple[Transition, jax.Array, Any]:
        """A new-task batch, its tasks [B], and a replay batch (Buffer rows [B])."""
        k_task, k_row, k_replay = jax.random.split(key, 3)
        if config.method == "joint":  # every task seen so far, equally often
            tasks = jax.random.randint(k_task, (batch,), 0, state.task + 1)
        else:
            tasks = jnp.full((batch,), state.task)
        rows = (jax.random.uniform(k_row, (batch,)) * seq.sizes[tasks]).astype(jnp.int32)
        new = jax.tree.map(lambda x: x[tasks, rows], seq.transitions)
        slots = jax.random.randint(k_replay, (batch,), 0, jnp.maximum(state.buffer.filled, 1))
        replay = jax.tree.map(lambda x: x[slots], state.buffer._replace(filled=None))
        return new, tasks, replay

    def critic_step(state: ContinualState, key: jax.Array):
        k_batch, k_new, k_old = jax.random.split(key, 3)
        new, tasks, replay = sample(state, k_batch)
        weight = config.replay_weight * (state.buffer.filled > 0)

        def loss_fn(params):
            loss, q = td_loss(params, state, new, head_of(tasks), k_new)
            old_head = head_of(replay.task)
            if config.method == "replay":
                loss = loss + weight * td_loss(params, state, replay.data, old_head, k_old)[0]
            if config.method == "oer":  # anchor Q on (replayed state, stored action)
                q_old = critic.apply(params, replay.data.obs, replay.action, old_head)
                loss = loss + weight * jnp.square(q_old - replay.q.T).mean(-1).sum()
            if config.method == "ewc":
                loss = loss + ewc_penalty(params, state.fisher[1], state.anchor[1])
            return loss, q

        (loss, q), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.critic.params)
        critic_ts = state.critic.apply_gradients(grads=grads)
        return state._replace(critic=critic_ts), (loss, q, new, tasks, replay)

    def learn(state: ContinualState) -> tuple[ContinualState, dict]:
        key, k_critic = jax.random.split(state.key)
        state, (c_loss, q, news, tasks, replays) = jax.lax.scan(
            critic_step, state, jax.random.split(k_critic, config.policy_freq)
        )
        last = lambda tree: jax.tree.map(lambda x: x[-1], tree)
        new, head, replay = last(news), head_of(last(tasks)), last(replays)
        old_head = head_of(replay.task)
        weight = config.replay_weight * (state.buffer.filled > 0)

        def actor_loss(params):
            loss, bc = td3_bc_loss(params, state.critic.params, new, head)
            if config.method == "replay":
                old = td3_bc_loss(params, state.critic.params, replay.data, old_head)[0]
                loss = loss + weight * old
            if config.method == "ewc":
                loss = loss + ewc_penalty(params, state.fisher[0], state.anchor[0])
            return loss, bc

        (a_loss, bc), grads = jax.value_and_grad(actor_loss, has_aux=True)(state.actor.params)
        actor_ts = state.actor.apply_gradients(grads=grads)
        metrics = {"critic_loss": c_loss.mean(), "actor_loss": a_loss, "bc_mse": bc, "q": q.mean()}
        clone = state.clone
        if config.method == "oer":  # dual behaviour cloning

            def clone_step(clone, batch):
                new, tasks, replay = batch
                head, old_head = head_of(tasks), head_of(replay.task)
                target = jax.lax.stop_gradient(actor.apply(actor_ts.params, new.obs, head))

                def clone_loss(params):
                    now = jnp.square(actor.apply(params, new.obs, head) - target).mean()
                    kept = actor.apply(params, replay.data.obs, old_head)
                    return now + weight * jnp.square(kept - replay.action).mean()

                loss, grads = jax.value_and_grad(clone_loss)(clone.params)
                return clone.apply_gradients(grads=grads), loss

            clone, metrics["clone_loss"] = clone_step(clone, (new, last(tasks), replay))
            if config.clone_steps > 1:  # more steps, each on fresh batches
                key, k_clone = jax.random.split(key)
                extra = jax.vmap(lambda k: sample(state, k))(
                    jax.random.split(k_clone, config.clone_steps - 1)
                )
                clone, losses = jax.lax.scan(clone_step, clone, extra)
                metrics["clone_loss"] = (metrics["clone_loss"] + losses.sum()) / config.clone_steps
        state = state._replace(
            actor=actor_ts,
            clone=clone,
            target_actor=optax.incremental_update(actor_ts.params, state.target_actor, config.tau),
            target_critic=optax.incremental_update(
                state.critic.params, state.target_critic, config.tau
            ),
            key=key,
        )
        return state, metrics

    def evaluated(state: ContinualState) -> Any:
        return (state.clone if config.method == "oer" else state.actor).params

    def evaluate_all(state: ContinualState, key: jax.Array) -> jax.Array:
        """Mean greedy return on every task with its own head: [T]."""

        def one(params, head, k):
            p = {"actor": evaluated(state), "head": head_of(head)}
            run = evaluate(k, env, params, policy, p, config.eval_episodes, num_steps=episode_steps)
            return run["return"].mean()

        keys = jax.random.split(key, num_tasks)
        return jax.vmap(one)(stacked_params, jnp.arange(num_tasks), keys)

    def select(state: ContinualState, key: jax.Array) -> tuple[jax.Array, dict]:
        """The task's kept transitions [buffer_size] (indices into its dataset)."""
        t = state.task
        data = jax.tree.map(lambda x: x[t], seq.transitions)
        if config.selection == "random":
            idx = select_random(key, seq.sizes[t], data.reward.shape[0], config.buffer_size)
            return idx, {}
        k_model, k_fit, k_select = jax.random.split(key, 3)
        model, nll = dynamics.train(dynamics.init(k_model), data, seq.sizes[t], k_fit)
        act = lambda obs: actor.apply(state.actor.params, obs, head_of(t))
        idx, stats = select_mbes(
            k_select, data, seq.sizes[t], seq.starts[t], act,
            lambda o, a: dynamics.predict(model.params, o, a), config.buffer_size,
            config.num_neighbours, config.num_chains, config.variance_ratio,
        )  # fmt: skip
        return idx, {**stats, "dynamics_nll": nll[-1]}

    def keep(state: ContinualState, idx: jax.Array) -> Buffer:
        t = state.task
        data = jax.tree.map(lambda x: x[t, idx], seq.transitions)
        head = head_of(jnp.full(idx.shape, t))
        if config.method == "oer":  # the learning policy's actions, which mastered task t
            action = actor.apply(state.actor.params, data.obs, head)
        else:
            action = data.action
        q = critic.apply(state.critic.params, data.obs, action, head).T  # [n, 2]
        start = t * config.buffer_size
        put = lambda buf, rows: jax.lax.dynamic_update_slice_in_dim(buf, rows, start, 0)
        b = state.buffer
        return Buffer(
            jax.tree.map(put, b.data, data),
            put(b.task, jnp.full(idx.shape, t, jnp.int32)),
            put(b.action, action),
            put(b.q, q),
            (t + 1) * config.buffer_size,
        )

    def fisher(state: ContinualState, key: jax.Array) -> Any:
        """Diagonal empirical Fisher of the actor's and critic's losses on task ``state.task``."""
        t = state.task
        rows = jax.random.randint(key, (config.fisher_samples,), 0, seq.sizes[t])
        data = jax.tree.map(lambda x: x[t, rows][:, None], seq.transitions)  # [n, 1]
        head = head_of(jnp.full((1,), t))
        a_grad = jax.vmap(
            jax.grad(lambda p, d: td3_bc_loss(p, state.critic.params, d, head)[0]), (None, 0)
        )(state.actor.params, data)
        c_grad = jax.vmap(jax.grad(lambda p, d, k: td_loss(p, state, d, head, k)[0]), (None, 0, 0))(
            state.critic.params, data, jax.random.split(key, config.fisher_samples)
        )
        return jax.tree.map(lambda g: jnp.square(g).mean(0), (a_grad, c_grad))

    def update(state: ContinualState) -> tuple[ContinualState, dict]:
        """Learn task ``state.task``, evaluate on every task, keep what the method keeps."""
        key, k_fresh, k_eval, k_select, k_fisher = jax.random.split(state.key, 5)
        if config.method == "scratch":  # fresh networks and optimiser states
            a, c = networks(k_fresh)
            restart = lambda ts, new: ts.replace(
                step=0, params=new.params, opt_state=ts.tx.init(new.params)
            )
            state = state._replace(
                actor=restart(state.actor, a),
                critic=restart(state.critic, c),
                target_actor=a.params,
                target_critic=c.params,
            )
        state = state._replace(key=key)
        state, stats = jax.lax.scan(
            lambda s, _: learn(s), state, None, config.steps_per_task // config.policy_freq
        )
        metrics = {k: v.mean() for k, v in stats.items()}
        if config.eval_episodes > 0:
            returns = evaluate_all(state, k_eval)
            metrics["return"] = returns
            metrics["score"] = 100.0 * (returns - refs[:, 0]) / (refs[:, 1] - refs[:, 0])
        if config.replays:
            idx, selection = select(state, k_select)
            metrics |= selection
            state = state._replace(buffer=keep(state, idx))
        if config.method == "ewc":
            f = fisher(state, k_fisher)
            state = state._replace(
                fisher=jax.tree.map(jnp.add, state.fisher, f),
                anchor=(state.actor.params, state.critic.params),
            )
        return state._replace(task=state.task + 1), metrics

    def policy_params(state: ContinualState) -> dict:
        return {"actor": evaluated(state), "head": jnp.maximum(state.task - 1, 0)}

    return Agent(
        policy,
        init,
        learn,
        update,
        policy_params,
        num_updates=num_tasks,
        steps_per_update=config.steps_per_task,
        step_unit="gradient steps",
    )


def buffer_distances(
    learner: Agent,
    state: ContinualState,
    env: Any,
    task_params: Sequence[Any],
    datasets: Sequence[Transition],
    samples: int = 1_000,
) -> dict[str, np.ndarray]:
    """How the kept buffers sit between the final policy's own states and the task's data, per
    seed [S] of a batched final ``state``, each a mean over past tasks, in the learner's units:

    - ``buffer``: the squared MMD between a task's kept buffer and the greedy policy's states on
      that task; ``random``: the same for a buffer drawn uniformly from the task's dataset
      (buffers above ``samples`` transitions are represented by ``samples`` of them);
    - ``coverage``: the mean distance from a dataset state (``samples`` drawn uniformly) to its
      nearest kept state (lower: the buffer covers more of the task's data);
      ``coverage_random``: the same for the uniform buffer.
    """
    seeds, size = state.task.shape[0], int(state.buffer.filled[0]) // len(datasets)
    used = min(size, samples)  # the kernel matrix is [used + own, used + own]
    units = learner.policy.spec["units"]
    normalize = lambda x: (np.asarray(x) - units["obs_mean"]) / np.asarray(units["obs_std"])
    steps = max(samples // 10, 1)

    @jax.jit
    def own_states(params, env_params, key):  # [steps * 10, D] of the greedy policy
        act = lambda obs, k: learner.policy.act(params, (), obs, k, True)[1]
        obs = collect(key, env, env_params, act, steps, 10).obs
        return obs.reshape(-1, obs.shape[-1])

    # mean over x [N, D] of the distance to the nearest row of y [M, D]
    nearest = jax.jit(lambda x, y: jnp.sqrt(sq_distances(x, y).min(1)).mean())

    def draw(data, key, num):  # num distinct rows of data [N, D]
        return data[np.asarray(select_random(key, len(data), len(data), num))]

    past = range(len(datasets) - 1)  # the last task's buffer is never replayed
    data = [normalize(datasets[t].obs) for t in past]
    drawn = [draw(data[t], jax.random.key(t), size) for t in past]  # uniform, same size
    probe = [draw(data[t], jax.random.fold_in(jax.random.key(t), 1), samples) for t in past]
    out = {k: np.zeros(seeds) for k in ("buffer", "random", "coverage", "coverage_random")}
    for s in range(seeds):
        params = jax.tree.map(lambda x, s=s: x[s], learner.policy_params(state))
        for t in past:
            own = normalize(own_states(params | {"head": t}, task_params[t], jax.random.key(s)))
            kept = state.buffer.data.obs[s, t * size : (t + 1) * size]
            subset = draw(kept, jax.random.key(t), used) if used < size else kept
            out["buffer"][s] += float(mmd(subset, own)) / len(past)
            out["random"][s] += float(mmd(drawn[t][:used], own)) / len(past)
            out["coverage"][s] += float(nearest(probe[t], kept)) / len(past)
            out["coverage_random"][s] += float(nearest(probe[t], drawn[t])) / len(past)
    return out
