"""TD3+BC (Fujimoto & Gu, 2021): TD3 whose actor also regresses onto the dataset's actions.

    td3 = make_td3_bc(config, transitions, env, env_params, ref_scores=(random, expert))
    state, metrics = jax.jit(td3.train)(key)                         # one run (an Agent)
    state, metrics = jax.jit(jax.vmap(td3.train))(keys)              # many seeds at once
    carry, action = td3.policy.act(td3.policy_params(state), (), env_obs, key)  # env's units

``transitions`` are flat ``[N]`` (``load_dataset``'s). One ``learn`` is ``policy_freq`` critic
gradient steps, then one actor step and the target updates; one ``update`` is the learns of
``eval_every`` critic steps under one ``lax.scan``, then ``eval_episodes`` vmapped greedy episodes
in the env. The policy (``td3_bc_policy``) normalises observations with the dataset's statistics
and rescales actions to the env's bounds itself, so it exports and acts without the dataset.
Defaults are the paper's (= CORL's): alpha 2.5, policy noise 0.2 clipped at 0.5, policy_freq 2,
tau 0.005, Adam 3e-4, batch 256, 256x256 ReLU networks, observations normalised.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.train_state import TrainState

from agents import offline
from agents.core import Agent, Policy, no_carry, policy_spec
from agents.hparams import require, require_fields, static, sweepable
from agents.networks import MLP, Critic, CriticEnsemble, dense
from agents.replay import Transition


@struct.dataclass
class TD3BCConfig:
    """TD3+BC settings; static fields fix shapes and loop lengths, the rest can be vmapped."""

    total_steps: int = static(1_000_000)  # critic gradient steps per run
    eval_every: int = static(5_000)  # gradient steps per `update` (one evaluation each)
    eval_episodes: int = static(10)  # 0: no evaluation
    batch_size: int = static(256)
    hidden: tuple[int, ...] = static((256, 256))  # actor and each of the twin critics
    policy_freq: int = static(2)  # critic steps per actor (and target) step
    normalize_obs: bool = static(True)
    actor_lr: float = sweepable(3e-4)
    critic_lr: float = sweepable(3e-4)
    gamma: float = sweepable(0.99)
    tau: float = sweepable(0.005)
    alpha: float = sweepable(2.5)  # weight of the Q term against behaviour cloning
    policy_noise: float = sweepable(0.2)  # target policy smoothing, in units of max action
    noise_clip: float = sweepable(0.5)

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.eval_every

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        for name in ("total_steps", "eval_every", "batch_size", "policy_freq"):
            require(getattr(self, name) >= 1, f"TD3BCConfig.{name} must be >= 1")
        require(self.eval_episodes >= 0, "TD3BCConfig.eval_episodes must be >= 0")
        require(
            self.eval_every % self.policy_freq == 0,
            f"TD3BCConfig.eval_every={self.eval_every} must be a multiple of policy_freq="
            f"{self.policy_freq} (each scanned step is policy_freq critic steps + 1 actor step)",
        )
        require(
            self.total_steps % self.eval_every == 0,
            f"TD3BCConfig.total_steps={self.total_steps} must be a multiple of eval_every="
            f"{self.eval_every}",
        )
        checks = {
            "actor_lr": (lambda v: v > 0, "> 0"),
            "critic_lr": (lambda v: v > 0, "> 0"),
            "gamma": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
            "tau": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
            "alpha": (lambda v: v >= 0, ">= 0 (0 is pure behaviour cloning)"),
            "policy_noise": (lambda v: v >= 0, ">= 0"),
            "noise_clip": (lambda v: v >= 0, ">= 0"),
        }
        require_fields(self, checks)


class Actor(nn.Module):
    """Deterministic policy: obs [..., obs_dim] -> action [..., action_dim] in (-1, 1)."""

    action_dim: int
    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return jnp.tanh(dense(self.action_dim, scale=1.0)(MLP(self.hidden, "relu")(obs)))


def td3_bc_policy(units: dict[str, list[float]], hidden: tuple[int, ...]) -> Policy:
    """TD3+BC's deterministic actor in the env's units (``units``: ``OfflineData.policy_units()``):
    env obs [B, obs_dim] are normalised with the dataset's ``obs_mean``/``obs_std``, its tanh
    actions rescaled to ``[action_low, action_high]``. It acts the same with ``deterministic``
    either way (no exploration noise)."""
    normalize, to_env = offline.env_units(**units)
    actor = Actor(len(units["action_low"]), tuple(hidden))

    def act(params, carry, env_obs, key, deterministic=False):
        return carry, to_env(actor.apply(params, normalize(env_obs)))

    return Policy(act, no_carry, policy_spec(td3_bc_policy, units=units, hidden=tuple(hidden)))


class TD3BCState(NamedTuple):
    """Everything a TD3+BC run carries from one update to the next."""

    actor: TrainState
    critic: TrainState  # twin critics (CriticEnsemble of 2)
    target_actor: Any
    target_critic: Any
    key: jax.Array


def make_td3_bc(
    config: TD3BCConfig,
    transitions: Transition,
    env: Any,
    env_params: Any,
    ref_scores: tuple[float, float] | None = None,
) -> Agent:
    """TD3+BC on ``transitions`` [N] (checked against ``env``), evaluating in ``env``.

    ``ref_scores`` = (random, expert) returns adds a ``normalized_score`` metric.
    """
    config.validate()
    offline.check_ref_scores(ref_scores)
    data = offline.prepare(transitions, env, env_params, normalize_obs=config.normalize_obs)
    dataset = data.transitions
    obs_dim, act_dim = dataset.obs.shape[1], dataset.action.shape[1]
    policy = td3_bc_policy(data.policy_units(), hidden=config.hidden)
    actor = Actor(act_dim, config.hidden)
    critic = CriticEnsemble(2, config.hidden, "relu")
    first_critic = Critic(config.hidden, "relu")

    def init(key: jax.Array) -> TD3BCState:
        key, k_actor, k_critic = jax.random.split(key, 3)
        obs, action = jnp.zeros((obs_dim,)), jnp.zeros((act_dim,))
        actor_params = actor.init(k_actor, obs)
        critic_params = critic.init(k_critic, obs, action)
        return TD3BCState(
            TrainState.create(
                apply_fn=actor.apply, params=actor_params, tx=optax.adam(config.actor_lr)
            ),
            TrainState.create(
                apply_fn=critic.apply, params=critic_params, tx=optax.adam(config.critic_lr)
            ),
            jax.tree.map(jnp.copy, actor_params),
            jax.tree.map(jnp.copy, critic_params),
            key,
        )

    def critic_step(state: TD3BCState, key: jax.Array) -> tuple[TrainState, tuple]:
        k_batch, k_noise = jax.random.split(key)
        batch = offline.sample(dataset, k_batch, config.batch_size)
        noise = jnp.clip(
            config.policy_noise * jax.random.normal(k_noise, batch.action.shape),
            -config.noise_clip,
            config.noise_clip,
        )
        next_action = jnp.clip(actor.apply(state.target_actor, batch.next_obs) + noise, -1, 1)
        next_q = critic.apply(state.target_critic, batch.next_obs, next_action).min(0)
        not_terminated = 1.0 - batch.terminated.astype(jnp.float32)  # truncation bootstraps
        target = batch.reward + config.gamma * not_terminated * next_q

        def loss_fn(params):
            q = critic.apply(params, batch.obs, batch.action)  # [2, B]
            return jnp.square(q - target).mean(1).sum(), q.mean()

        (loss, q), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.critic.params)
        return state.critic.apply_gradients(grads=grads), (loss, q, batch)

    def learn(state: TD3BCState) -> tuple[TD3BCState, dict]:
        key, k_critic = jax.random.split(state.key)

        def scan_critic(critic_ts, k):
            return critic_step(state._replace(critic=critic_ts), k)

        keys = jax.random.split(k_critic, config.policy_freq)
        critic_ts, (c_loss, q, batches) = jax.lax.scan(scan_critic, state.critic, keys)
        batch = jax.tree.map(lambda x: x[-1], batches)  # the actor learns on the last batch
        q1_params = offline.ensemble_member(critic_ts.params, 0)

        def actor_loss(params):
            pi = actor.apply(params, batch.obs)
            q1 = first_critic.apply(q1_params, batch.obs, pi)
            lmbda = config.alpha / jax.lax.stop_gradient(jnp.abs(q1).mean())
            bc = jnp.square(pi - batch.action).mean()
            return -lmbda * q1.mean() + bc, bc

        (a_loss, bc), grads = jax.value_and_grad(actor_loss, has_aux=True)(state.actor.params)
        actor_ts = state.actor.apply_gradients(grads=grads)
        state = TD3BCState(
            actor_ts,
            critic_ts,
            optax.incremental_update(actor_ts.params, state.target_actor, config.tau),
            optax.incremental_update(critic_ts.params, state.target_critic, config.tau),
            key,
        )
        metrics = {"critic_loss": c_loss.mean(), "actor_loss": a_loss, "bc_mse": bc, "q": q.mean()}
        return state, metrics

    return offline.make_agent(
        config,
        policy,
        init,
        learn,
        lambda state: state.actor.params,
        env,
        env_params,
        ref_scores,
        config.eval_every // config.policy_freq,
    )
