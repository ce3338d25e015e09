"""Proximal Policy Optimisation, feed-forward or recurrent (GRU), as one pure training function.

    ppo = make_ppo(config, env, env_params)                           # an agents.core.Agent
    runner_state, metrics = jax.jit(ppo.train)(key)                   # one run
    runner_state, metrics = jax.jit(jax.vmap(ppo.train))(keys)        # many seeds at once
    jax.vmap(lambda c, k: make_ppo(c, env, env_params).train(k))(stack_configs(cfgs), keys)

The whole loop is nested ``lax.scan``s: updates > (rollout steps, epochs > minibatches). One
``learn`` (= one ``update``, one metrics line) is a rollout of ``num_steps`` steps in
``num_envs`` envs and its epochs of minibatch steps; runners execute ``update`` in chunks (for
progress, checkpoints and resumption).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from agents.core import Agent, Policy, no_carry, policy_spec
from agents.gae import gae
from agents.hparams import check_fits, require, require_fields, static, sweepable
from agents.networks import ActorCritic, RecurrentActorCritic, activation_fn, image_channels
from envs.core import spaces
from envs.wrappers import EpisodeStats, episode_metrics


@struct.dataclass
class PPOConfig:
    """PPO settings; static fields fix shapes and loop lengths, the rest can be vmapped."""

    num_envs: int = static(4)
    num_steps: int = static(128)
    total_steps: int = static(500_000)  # env steps over all envs
    update_epochs: int = static(4)
    num_minibatches: int = static(4)
    hidden: tuple[int, ...] = static((64, 64))  # MLP torsos (feed-forward) / heads (recurrent)
    activation: str = static("tanh")
    recurrent: bool = static(False)
    embed: tuple[int, ...] = static((128,))  # recurrent only: MLP before the GRU
    gru_hidden: int = static(128)  # recurrent only
    conv: tuple[int, ...] = static((16,))  # image [H, W, C] observations: 3x3 conv channels
    anneal_lr: bool = static(True)
    lr: float = sweepable(2.5e-4)
    gamma: float = sweepable(0.99)
    gae_lambda: float = sweepable(0.95)
    clip_eps: float = sweepable(0.2)
    ent_coef: float = sweepable(0.01)
    vf_coef: float = sweepable(0.5)
    max_grad_norm: float = sweepable(0.5)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.batch_size

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches", "gru_hidden"):
            require(getattr(self, name) >= 1, f"PPOConfig.{name} must be >= 1")
        require(
            self.num_updates >= 1,
            f"total_steps={self.total_steps} is smaller than one rollout batch "
            f"(num_envs * num_steps = {self.batch_size}); raise total_steps",
        )
        trained = self.num_updates * self.batch_size
        if self.total_steps - trained > 0.01 * self.total_steps:  # say so when it matters
            warnings.warn(
                f"PPOConfig.total_steps={self.total_steps} is not a whole number of rollout "
                f"batches (num_envs * num_steps = {self.batch_size}): {trained} steps are "
                f"trained; use {trained} or {trained + self.batch_size} to silence this",
                stacklevel=2,
            )
        if self.recurrent:
            require(
                self.num_envs % self.num_minibatches == 0,
                f"recurrent PPO splits minibatches over environments: num_envs={self.num_envs} "
                f"is not divisible by num_minibatches={self.num_minibatches}",
            )
        else:
            require(
                self.batch_size % self.num_minibatches == 0,
                f"the batch num_envs * num_steps = {self.batch_size} does not divide into "
                f"num_minibatches={self.num_minibatches}; choose a divisor",
            )
        activation_fn(self.activation)
        require_fields(
            self,
            {
                "lr": (lambda v: v > 0, "> 0"),
                "gamma": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
                "gae_lambda": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
                "clip_eps": (lambda v: v > 0, "> 0"),
                "ent_coef": (lambda v: v >= 0, ">= 0"),
                "vf_coef": (lambda v: v >= 0, ">= 0"),
                "max_grad_norm": (lambda v: v > 0, "> 0"),
            },
        )


def _network(action_dim, discrete, hidden, activation, recurrent, embed, gru_hidden, conv):
    if recurrent:
        return RecurrentActorCritic(
            action_dim, discrete, embed, gru_hidden, hidden, activation, conv
        )
    return ActorCritic(action_dim, discrete, hidden, activation, conv)


def ppo_policy(
    action_dim: int,
    discrete: bool,
    hidden: tuple[int, ...],
    activation: str,
    recurrent: bool,
    embed: tuple[int, ...],
    gru_hidden: int,
    conv: tuple[int, ...] = (),
) -> Policy:
    """The actor of a PPO actor-critic: samples (or takes the mode of) its action distribution;
    a recurrent one carries its GRU memory [B, gru_hidden]; ``conv``: image observations."""
    hidden, embed, conv = tuple(hidden), tuple(embed), tuple(conv)
    network = _network(action_dim, discrete, hidden, activation, recurrent, embed, gru_hidden, conv)

    def act(params, carry, obs, key, deterministic=False):
        if recurrent:
            no_reset = jnp.zeros((1, obs.shape[0]), bool)
            carry, pi, _ = network.apply(params, carry, obs[None], no_reset)
            action = pi.mode() if deterministic else pi.sample(seed=key)
            return carry, action[0]
        pi, _ = network.apply(params, obs)
        return carry, pi.mode() if deterministic else pi.sample(seed=key)

    def initial_carry(batch_size: int):
        return jnp.zeros((batch_size, gru_hidden), jnp.float32) if recurrent else ()

    spec = policy_spec(
        ppo_policy,
        action_dim=action_dim,
        discrete=discrete,
        hidden=hidden,
        activation=activation,
        recurrent=recurrent,
        embed=embed,
        gru_hidden=gru_hidden,
        conv=conv,
    )
    return Policy(act, initial_carry if recurrent else no_carry, spec)


class RunnerState(NamedTuple):
    """Everything a PPO run carries from one update to the next."""

    train_state: TrainState
    env_state: Any  # [B] batched env states
    obs: jax.Array  # [B, obs_dim]
    resets: jax.Array  # [B] True where obs is the first of an episode
    carry: jax.Array  # [B, H] recurrent memory (H = 0 for feed-forward)
    key: jax.Array


class Rollout(NamedTuple):
    """One rollout step of every env: what the PPO loss and GAE need. Leaves [T, B, ...]."""

    obs: jax.Array
    resets: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    next_value: jax.Array  # value of the pre-reset next observation
    next_obs: jax.Array  # the pre-reset next observation
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    info: dict


def make_ppo(config: PPOConfig, env: Any, env_params: Any) -> Agent:
    """PPO on ``env`` (any gymnax-1.x environment) as an ``agents.core.Agent``."""
    config.validate()
    env = EpisodeStats(env)
    obs_dim = tuple(env.observation_space(env_params).shape)
    conv = image_channels(obs_dim, config.conv, "PPO")
    action_space = env.action_space(env_params)
    discrete = isinstance(action_space, spaces.Discrete)
    action_dim = int(action_space.n) if discrete else int(np.prod(action_space.shape))
    net_args = (config.hidden, config.activation, config.recurrent, config.embed, config.gru_hidden)
    net_args = (*net_args, conv)
    policy = ppo_policy(action_dim, discrete, *net_args)
    network = _network(action_dim, discrete, *net_args)
    memory = config.gru_hidden if config.recurrent else 0
    num_envs, num_steps = config.num_envs, config.num_steps
    # one rollout (obs, next obs for the final value, action, reward, flags, value, log-prob)
    floats = num_steps * num_envs * (2 * int(np.prod(obs_dim)) + action_dim + 6 + memory)
    require(
        floats < 2**31,
        f"num_envs * num_steps = {config.batch_size} steps of {obs_dim} observations are "
        f"{floats:.2e} numbers in one rollout, past what XLA indexes (2^31); use fewer envs",
    )
    check_fits(4 * floats, "one PPO rollout", "lower ppo.num_envs or ppo.num_steps")

    def apply(params, carry, obs, resets):
        """carry [B, H], obs [T, B, D], resets [T, B] -> (carry, dist over [T, B], value [T, B])."""
        if not config.recurrent:
            pi, value = network.apply(params, obs)
            return carry, pi, value
        return network.apply(params, carry, obs, resets)

    def initial_memory(batch_size: int) -> jax.Array:  # [B, H]; H = 0 when feed-forward
        return jnp.zeros((batch_size, memory), jnp.float32)

    vmap_reset = jax.vmap(env.reset, in_axes=(0, None))
    vmap_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def make_optimizer():
        steps_per_update = config.update_epochs * config.num_minibatches
        lr = config.lr
        if config.anneal_lr:
            lr = optax.linear_schedule(lr, 0.0, config.num_updates * steps_per_update)
        return optax.chain(
            optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5)
        )

    def init(key: jax.Array) -> RunnerState:
        key, k_net, k_env = jax.random.split(key, 3)
        obs, env_state = vmap_reset(jax.random.split(k_env, num_envs), env_params)
        carry = initial_memory(num_envs)
        resets = jnp.ones((num_envs,), bool)
        if config.recurrent:
            params = network.init(k_net, carry, obs[None], resets[None])
        else:
            params = network.init(k_net, obs)
        ts = TrainState.create(apply_fn=network.apply, params=params, tx=make_optimizer())
        return RunnerState(ts, env_state, obs, resets, carry, key)

    def env_step(rs: RunnerState, _) -> tuple[RunnerState, Rollout]:
        key, k_act, k_env = jax.random.split(rs.key, 3)
        params = rs.train_state.params
        carry, pi, value = apply(params, rs.carry, rs.obs[None], rs.resets[None])
        action = pi.sample(seed=k_act)
        log_prob, action, value = pi.log_prob(action)[0], action[0], value[0]
        obs, env_state, reward, term, trunc, info = vmap_step(
            jax.random.split(k_env, num_envs), rs.env_state, action, env_params
        )
        # Bootstrap from the state each env actually reached (pre-reset), memory continuing.
        # Feed-forward agents evaluate these values in one batch after the rollout instead.
        final_obs = info.pop("final_observation")
        next_value = jnp.zeros_like(value)
        if config.recurrent:
            no_reset = jnp.zeros_like(rs.resets)[None]
            _, _, next_value = apply(params, carry, final_obs[None], no_reset)
            next_value = next_value[0]
        transition = Rollout(
            rs.obs,
            rs.resets,
            action,
            log_prob,
            value,
            next_value,
            final_obs,
            reward,
            term,
            trunc,
            info,
        )
        done = jnp.logical_or(term, trunc)
        return RunnerState(rs.train_state, env_state, obs, done, carry, key), transition

    def loss_fn(params, init_carry, batch: Rollout, advantages, targets):
        _, pi, value = apply(params, init_carry, batch.obs, batch.resets)
        log_prob = pi.log_prob(batch.action)
        value_clipped = batch.value + jnp.clip(
            value - batch.value, -config.clip_eps, config.clip_eps
        )
        value_loss = (
            0.5
            * jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets)).mean()
        )
        ratio = jnp.exp(log_prob - batch.log_prob)
        adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        actor_loss = -jnp.minimum(
            ratio * adv, jnp.clip(ratio, 1 - config.clip_eps, 1 + config.clip_eps) * adv
        ).mean()
        entropy = pi.entropy().mean()
        total = actor_loss + config.vf_coef * value_loss - config.ent_coef * entropy
        stats = {
            "actor_loss": actor_loss,
            "value_loss": value_loss,
            "entropy": entropy,
            "approx_kl": ((ratio - 1) - jnp.log(ratio)).mean(),
            "clip_fraction": (jnp.abs(ratio - 1) > config.clip_eps).mean(),
        }
        return total, stats

    def learn(rs: RunnerState) -> tuple[RunnerState, dict]:
        init_carry = rs.carry
        rs, traj = jax.lax.scan(env_step, rs, None, num_steps)  # traj: [T, B, ...]
        if not config.recurrent:
            params = rs.train_state.params
            _, _, next_value = apply(params, rs.carry, traj.next_obs, traj.resets)
            traj = traj._replace(next_value=next_value)
        advantages, targets = gae(
            traj.reward,
            traj.value,
            traj.next_value,
            traj.terminated,
            traj.truncated,
            config.gamma,
            config.gae_lambda,
        )
        data = (traj._replace(info={}, next_obs=None), advantages, targets)
        if not config.recurrent:  # feed-forward: every sample is a length-1 sequence
            data = jax.tree.map(lambda x: x.reshape((1, -1) + x.shape[2:]), data)
            init_carry = initial_memory(config.batch_size)

        def epoch(carry, _):
            ts, key = carry
            key, k_perm = jax.random.split(key)
            perm = jax.random.permutation(k_perm, data[1].shape[1])

            def split(x, axis):  # shuffle along `axis` and cut into minibatches on a new axis 0
                x = jnp.take(x, perm, axis=axis)
                x = jnp.moveaxis(x, axis, 0)
                n = config.num_minibatches
                x = x.reshape((n, x.shape[0] // n) + x.shape[1:])
                return jnp.moveaxis(x, 1, axis + 1)

            minibatches = (jax.tree.map(lambda x: split(x, 1), data), split(init_carry, 0))

            def minibatch_step(ts, mb):
                (batch, adv, tgt), carry0 = mb
                grads, stats = jax.grad(loss_fn, has_aux=True)(ts.params, carry0, batch, adv, tgt)
                return ts.apply_gradients(grads=grads), stats

            ts, stats = jax.lax.scan(minibatch_step, ts, minibatches)
            return (ts, key), stats

        key, k_epochs = jax.random.split(rs.key)
        (ts, _), stats = jax.lax.scan(epoch, (rs.train_state, k_epochs), None, config.update_epochs)
        metrics = {k: v.mean() for k, v in stats.items()} | episode_metrics(traj.info)
        return rs._replace(train_state=ts, key=key), metrics

    return Agent(
        policy,
        init,
        learn,
        learn,
        lambda rs: rs.train_state.params,
        num_updates=config.num_updates,
        steps_per_update=config.batch_size,
    )
