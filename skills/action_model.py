"""The action model of skill-boundary detection: unconditional, causal, recurrent behaviour cloning.

``pi(a_t | o_<=t)``: an embedding MLP, a resettable GRU and a categorical (discrete actions) or
diagonal-Gaussian (continuous actions) head, trained by maximum likelihood on unsegmented
demonstrations with no skill input. Its per-step negative log-likelihood, with the memory reset
at detected boundaries, is what ``skills.boundary.detect_boundaries`` thresholds.

    model = make_action_model(config, action_space)
    params, metrics = jax.jit(make_train(config, action_space))(key, demos)   # demos [N, T]
    seg = jax.vmap(lambda o, a: detect_boundaries(model.step_fn(params), model.initial_memory(),
                                                  (o, a), BoundaryConfig(gap=2.0)))(obs, action)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from agents.hparams import require, static, sweepable
from agents.networks import MLP, PolicyHead, ResettableGRU, activation_fn
from agents.replay import Transition
from envs.core import is_concrete, spaces

__all__ = [
    "ActionModel",
    "ActionModelConfig",
    "ActionModelNet",
    "episode_starts",
    "make_action_model",
    "make_train",
]


@struct.dataclass
class ActionModelConfig:
    """Network sizes and training loop (static) and optimiser settings (vmappable)."""

    embed: tuple[int, ...] = static((128,))
    gru_hidden: int = static(128)
    head: tuple[int, ...] = static((128,))
    activation: str = static("tanh")
    num_updates: int = static(2_000)
    batch_size: int = static(32)  # whole trajectories per update
    lr: float = sweepable(1e-3)
    max_grad_norm: float = sweepable(1.0)

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        for name in ("gru_hidden", "num_updates", "batch_size"):
            require(getattr(self, name) >= 1, f"ActionModelConfig.{name} must be >= 1")
        activation_fn(self.activation)
        for name in ("lr", "max_grad_norm"):
            v = getattr(self, name)
            if is_concrete(v):
                require(
                    bool(np.all(np.asarray(v) > 0)), f"ActionModelConfig.{name}={v} must be > 0"
                )


class ActionModelNet(nn.Module):
    """Embedding MLP -> resettable GRU -> head MLP -> action distribution."""

    action_dim: int
    discrete: bool
    embed: Sequence[int] = (128,)
    hidden_size: int = 128
    head: Sequence[int] = (128,)
    activation: str = "tanh"

    @nn.compact
    def __call__(
        self, carry: jax.Array, obs: jax.Array, resets: jax.Array
    ) -> tuple[jax.Array, distrax.Distribution]:
        # carry [B, H], obs [T, B, D], resets [T, B] -> (carry [B, H], dist over [T, B])
        x = MLP(self.embed, self.activation)(obs)
        carry, x = ResettableGRU(self.hidden_size)(carry, x, resets)
        return carry, PolicyHead(self.action_dim, self.discrete)(MLP(self.head, self.activation)(x))


class ActionModel(NamedTuple):
    """The network with the views SBD and training need."""

    network: ActionModelNet
    discrete: bool
    hidden_size: int

    def init(self, key: jax.Array, obs_dim: int) -> Any:
        carry = ResettableGRU.initial_carry(1, self.hidden_size)
        return self.network.init(key, carry, jnp.zeros((1, 1, obs_dim)), jnp.ones((1, 1), bool))

    def initial_memory(self) -> jax.Array:  # [H]: the memory of one trajectory
        return jnp.zeros((self.hidden_size,), jnp.float32)

    def nll(self, params: Any, obs: jax.Array, action: jax.Array, resets: jax.Array) -> jax.Array:
        """-log pi(a_t | o_<=t): obs [T, B, D], action [T, B(, A)], resets [T, B] -> [T, B]."""
        carry = ResettableGRU.initial_carry(obs.shape[1], self.hidden_size)
        _, pi = self.network.apply(params, carry, obs, resets)
        return -pi.log_prob(action)

    def step_fn(self, params: Any) -> Callable[[jax.Array, Any], tuple[jax.Array, jax.Array]]:
        """``(memory [H], (obs [D], action)) -> (memory [H], nll [])``: the ``StepFn`` of SBD."""

        def step(memory: jax.Array, inputs: tuple[jax.Array, jax.Array]):
            obs, action = inputs
            carry, pi = self.network.apply(
                params, memory[None], obs[None, None], jnp.zeros((1, 1), bool)
            )
            return carry[0], -pi.log_prob(action[None, None])[0, 0]

        return step


def make_action_model(config: ActionModelConfig, action_space: spaces.Space) -> ActionModel:
    """The action model ``config`` describes for ``action_space`` (Discrete or Box)."""
    config.validate()
    discrete = isinstance(action_space, spaces.Discrete)
    action_dim = int(action_space.n) if discrete else int(np.prod(action_space.shape))
    net = ActionModelNet(
        action_dim, discrete, config.embed, config.gru_hidden, config.head, config.activation
    )
    return ActionModel(net, discrete, config.gru_hidden)


def episode_starts(terminated: jax.Array, truncated: jax.Array) -> jax.Array:
    """bool [..., T]: step t is the first of an episode (t == 0 or the episode ended at t - 1)."""
    done = jnp.logical_or(terminated, truncated)
    return jnp.concatenate([jnp.ones_like(done[..., :1]), done[..., :-1]], axis=-1)


def _check_demos(demos: Transition, discrete: bool) -> None:
    require(
        isinstance(demos, Transition),
        f"action model: expected an agents.replay.Transition, got {type(demos).__name__}; "
        "wrap your arrays as Transition(obs, action, reward, next_obs, terminated, truncated)",
    )
    shape = jnp.shape(demos.obs)
    require(
        len(shape) == 3,
        f"action model: obs must be [N trajectories, T steps, obs_dim], got shape {shape}",
    )
    want = shape[:2] if discrete else (*shape[:2], -1)
    got = jnp.shape(demos.action)
    require(
        got[:2] == shape[:2] and len(got) == len(want),
        f"action model: action must be {'[N, T]' if discrete else '[N, T, act_dim]'} to match "
        f"obs {shape}, got {got}",
    )
    if discrete:
        require(
            jnp.issubdtype(jnp.result_type(demos.action), jnp.integer),
            "action model: discrete actions must be integers; cast with .astype(jnp.int32)",
        )
    if is_concrete(demos.obs) and is_concrete(demos.action):
        require(
            bool(jnp.isfinite(demos.obs).all()) and bool(jnp.isfinite(demos.action).all()),
            "action model: demonstrations hold NaN or inf; drop or repair those steps",
        )


def make_train(
    config: ActionModelConfig, action_space: spaces.Space
) -> Callable[[jax.Array, Transition], tuple[Any, dict[str, jax.Array]]]:
    """``train(key, demos) -> (params, {"loss": [num_updates]})``: maximum-likelihood BC.

    ``demos`` is a ``Transition`` of whole trajectories [N, T, ...]; episodes inside a trajectory
    (ended by ``terminated | truncated``) reset the memory. Each update is an Adam step on the
    mean per-step NLL of ``batch_size`` trajectories drawn without replacement.
    """
    model = make_action_model(config, action_space)
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.lr))

    def train(key: jax.Array, demos: Transition) -> tuple[Any, dict[str, jax.Array]]:
        _check_demos(demos, model.discrete)
        num = demos.obs.shape[0]
        resets = episode_starts(demos.terminated, demos.truncated)
        time_major = lambda x: jnp.swapaxes(x, 0, 1)  # [B, T, ...] -> [T, B, ...]

        def loss_fn(params, idx):
            obs, action, res = (time_major(x[idx]) for x in (demos.obs, demos.action, resets))
            return model.nll(params, obs, action, res).mean()

        def update(state, key):
            params, opt_state = state
            idx = jax.random.choice(key, num, (min(config.batch_size, num),), replace=False)
            loss, grads = jax.value_and_grad(loss_fn)(params, idx)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        key_init, key_train = jax.random.split(key)
        params = model.init(key_init, demos.obs.shape[-1])
        (params, _), loss = jax.lax.scan(
            update, (params, tx.init(params)), jax.random.split(key_train, config.num_updates)
        )
        return params, {"loss": loss}

    return train
