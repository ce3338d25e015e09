"""Implicit Q-Learning (Kostrikov et al., 2022): in-sample expectile values, advantage-weighted BC.

    iql = make_iql(config, transitions, env, env_params, ref_scores=(random, expert))
    state, metrics = jax.jit(iql.train)(key)                         # one run (an Agent)
    state, metrics = jax.jit(jax.vmap(iql.train))(keys)              # many seeds at once
    carry, action = iql.policy.act(iql.policy_params(state), (), env_obs, key, deterministic=True)

``transitions`` are flat ``[N]`` (``load_dataset``'s). Each gradient step fits V to an upper
expectile of the target twin-Q on dataset actions, Q to ``r + gamma V(s')``, and the actor by
behaviour cloning weighted with ``exp(temperature * (Q - V))``; no action outside the dataset
is ever evaluated. One ``learn`` is one such step; one ``update`` is ``eval_every`` of them
under one ``lax.scan``, then ``eval_episodes`` vmapped greedy episodes. The policy
(``iql_policy``: the Gaussian's mean when deterministic, a sample otherwise) normalises
observations and rescales actions to the env's bounds itself, so it exports without the
dataset. Defaults are the paper's locomotion settings (as in CORL and JAX-CORL): expectile 0.7,
temperature 3.0, tau 0.005, Adam 3e-4 with a cosine-decayed actor learning rate, batch 256,
256x256 ReLU networks, no dropout, rewards scaled by ``1000 / (max return - min return)`` over
the dataset's episodes, observations normalised.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.train_state import TrainState

from agents import offline
from agents.core import Agent, Policy, no_carry, policy_spec
from agents.hparams import require, require_fields, static, sweepable
from agents.networks import MLP, CriticEnsemble, dense
from agents.replay import Transition

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@struct.dataclass
class IQLConfig:
    """IQL settings; static fields fix shapes and loop lengths, the rest can be vmapped."""

    total_steps: int = static(1_000_000)  # gradient steps per run (value, actor, critic each)
    eval_every: int = static(5_000)  # gradient steps per `update` (one evaluation each)
    eval_episodes: int = static(10)  # 0: no evaluation
    batch_size: int = static(256)
    hidden: tuple[int, ...] = static((256, 256))  # actor, value and each of the twin critics
    normalize_obs: bool = static(True)
    normalize_reward: bool = static(True)  # 1000 / (max - min episode return), as for locomotion
    cosine_actor_lr: bool = static(True)  # decay the actor's learning rate to 0 over the run
    actor_lr: float = sweepable(3e-4)
    value_lr: float = sweepable(3e-4)
    critic_lr: float = sweepable(3e-4)
    gamma: float = sweepable(0.99)
    tau: float = sweepable(0.005)
    expectile: float = sweepable(0.7)
    temperature: float = sweepable(3.0)  # inverse temperature of the advantage weights
    max_weight: float = sweepable(100.0)  # advantage weights are clipped here

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.eval_every

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        for name in ("total_steps", "eval_every", "batch_size"):
            require(getattr(self, name) >= 1, f"IQLConfig.{name} must be >= 1")
        require(self.eval_episodes >= 0, "IQLConfig.eval_episodes must be >= 0")
        require(
            self.total_steps % self.eval_every == 0,
            f"IQLConfig.total_steps={self.total_steps} must be a multiple of eval_every="
            f"{self.eval_every}",
        )
        checks = {
            "actor_lr": (lambda v: v > 0, "> 0"),
            "value_lr": (lambda v: v > 0, "> 0"),
            "critic_lr": (lambda v: v > 0, "> 0"),
            "gamma": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
            "tau": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
            "expectile": (lambda v: (v > 0) & (v < 1), "in (0, 1) (0.5 is the mean)"),
            "temperature": (lambda v: v >= 0, ">= 0 (0 is plain behaviour cloning)"),
            "max_weight": (lambda v: v > 0, "> 0"),
        }
        require_fields(self, checks)


class GaussianActor(nn.Module):
    """obs [..., obs_dim] -> (mean in (-1, 1), log_std [action_dim], state-independent)."""

    action_dim: int
    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean = jnp.tanh(dense(self.action_dim, scale=1.0)(MLP(self.hidden, "relu")(obs)))
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


def gaussian(mean: jax.Array, log_std: jax.Array) -> distrax.Distribution:
    """The actor's diagonal Gaussian over actions [..., action_dim]."""
    return distrax.MultivariateNormalDiag(mean, jnp.exp(jnp.broadcast_to(log_std, mean.shape)))


def iql_policy(units: dict[str, list[float]], hidden: tuple[int, ...]) -> Policy:
    """IQL's Gaussian actor in the env's units (``units``: ``OfflineData.policy_units()``): env
    obs [B, obs_dim] are normalised with the dataset's ``obs_mean``/``obs_std``; the action (the
    mean when ``deterministic``, else a sample, clipped to [-1, 1]) is rescaled to
    ``[action_low, action_high]``."""
    normalize, to_env = offline.env_units(**units)
    actor = GaussianActor(len(units["action_low"]), tuple(hidden))

    def act(params, carry, env_obs, key, deterministic=False):
        mean, log_std = actor.apply(params, normalize(env_obs))
        return carry, to_env(mean if deterministic else gaussian(mean, log_std).sample(seed=key))

    return Policy(act, no_carry, policy_spec(iql_policy, units=units, hidden=tuple(hidden)))


class Value(nn.Module):
    """State value: obs [..., obs_dim] -> v [...]."""

    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return dense(1, scale=1.0)(MLP(self.hidden, "relu")(obs))[..., 0]


class IQLState(NamedTuple):
    """Everything an IQL run carries from one update to the next."""

    actor: TrainState
    value: TrainState
    critic: TrainState  # twin critics (CriticEnsemble of 2)
    target_critic: Any
    key: jax.Array


def _prepare(config: IQLConfig, transitions: Transition, env: Any, env_params: Any):
    with jax.ensure_compile_time_eval():  # the data's checks and statistics, even in a trace
        transitions = offline.check_dataset(transitions, env, env_params)
        scale = offline.locomotion_reward_scale(transitions) if config.normalize_reward else 1.0
        return offline.prepare(
            transitions, env, env_params, normalize_obs=config.normalize_obs, reward_scale=scale
        )


def advantage_weights(
    config: IQLConfig,
    state: IQLState,
    transitions: Transition,
    env: Any,
    env_params: Any,
    temperature: float | None = None,
) -> jax.Array:
    """[N]: ``clip(exp(temperature * (Q - V)), 0, max_weight)`` of each of ``transitions``
    under a trained IQL run's target twin-Q (min) and value, as IQL's actor weighs them
    (``temperature`` defaults to the config's); the weights of an advantage-weighted skill."""
    data = _prepare(config, transitions, env, env_params).transitions
    q = CriticEnsemble(2, config.hidden, "relu").apply(state.target_critic, data.obs, data.action)
    v = Value(config.hidden).apply(state.value.params, data.obs)
    beta = config.temperature if temperature is None else temperature
    return jnp.minimum(jnp.exp(beta * (q.min(0) - v)), config.max_weight)


def make_iql(
    config: IQLConfig,
    transitions: Transition,
    env: Any,
    env_params: Any,
    ref_scores: tuple[float, float] | None = None,
) -> Agent:
    """IQL on ``transitions`` [N] (checked against ``env``), evaluating in ``env``.

    ``ref_scores`` = (random, expert) returns adds a ``normalized_score`` metric.
    """
    config.validate()
    offline.check_ref_scores(ref_scores)
    data = _prepare(config, transitions, env, env_params)
    dataset = data.transitions
    obs_dim, act_dim = dataset.obs.shape[1], dataset.action.shape[1]
    policy = iql_policy(data.policy_units(), hidden=config.hidden)
    actor = GaussianActor(act_dim, config.hidden)
    value = Value(config.hidden)
    critic = CriticEnsemble(2, config.hidden, "relu")

    def init(key: jax.Array) -> IQLState:
        key, k_actor, k_value, k_critic = jax.random.split(key, 4)
        obs, action = jnp.zeros((obs_dim,)), jnp.zeros((act_dim,))
        actor_lr = config.actor_lr
        if config.cosine_actor_lr:
            actor_lr = optax.cosine_decay_schedule(config.actor_lr, config.total_steps)
        critic_params = critic.init(k_critic, obs, action)
        return IQLState(
            TrainState.create(
                apply_fn=actor.apply, params=actor.init(k_actor, obs), tx=optax.adam(actor_lr)
            ),
            TrainState.create(
                apply_fn=value.apply,
                params=value.init(k_value, obs),
                tx=optax.adam(config.value_lr),
            ),
            TrainState.create(
                apply_fn=critic.apply, params=critic_params, tx=optax.adam(config.critic_lr)
            ),
            jax.tree.map(jnp.copy, critic_params),
            key,
        )

    def learn(state: IQLState) -> tuple[IQLState, dict]:
        key, k_batch = jax.random.split(state.key)
        batch = offline.sample(dataset, k_batch, config.batch_size)
        target_q = critic.apply(state.target_critic, batch.obs, batch.action).min(0)

        def value_loss(params):
            v = value.apply(params, batch.obs)
            diff = target_q - v
            weight = jnp.where(diff > 0, config.expectile, 1.0 - config.expectile)
            return (weight * jnp.square(diff)).mean(), v

        (v_loss, v), grads = jax.value_and_grad(value_loss, has_aux=True)(state.value.params)
        value_ts = state.value.apply_gradients(grads=grads)

        advantage = target_q - v  # with the value before this step, as CORL
        weight = jnp.minimum(jnp.exp(config.temperature * advantage), config.max_weight)

        def actor_loss(params):
            log_prob = gaussian(*actor.apply(params, batch.obs)).log_prob(batch.action)
            return -(weight * log_prob).mean()

        a_loss, grads = jax.value_and_grad(actor_loss)(state.actor.params)
        actor_ts = state.actor.apply_gradients(grads=grads)

        next_v = value.apply(value_ts.params, batch.next_obs)
        not_terminated = 1.0 - batch.terminated.astype(jnp.float32)  # truncation bootstraps
        target = batch.reward + config.gamma * not_terminated * next_v

        def critic_loss(params):
            q = critic.apply(params, batch.obs, batch.action)  # [2, B]
            return jnp.square(q - target).mean(), q.mean()

        (c_loss, q), grads = jax.value_and_grad(critic_loss, has_aux=True)(state.critic.params)
        critic_ts = state.critic.apply_gradients(grads=grads)
        state = IQLState(
            actor_ts,
            value_ts,
            critic_ts,
            optax.incremental_update(critic_ts.params, state.target_critic, config.tau),
            key,
        )
        metrics = {
            "value_loss": v_loss,
            "actor_loss": a_loss,
            "critic_loss": c_loss,
            "q": q,
            "advantage": advantage.mean(),
        }
        return state, metrics

    return offline.make_agent(
        config, policy, init, learn, lambda state: state.actor.params, env, env_params, ref_scores
    )
