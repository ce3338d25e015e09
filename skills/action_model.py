"""The action model of skill-boundary detection: unconditional, causal, recurrent behaviour cloning.

``pi(a_t | o_<=t)``: ``agents.networks.recurrent_torso`` (embedding MLP, resettable GRU), a head
MLP and a categorical (discrete actions) or diagonal-Gaussian (continuous actions) head, trained
by maximum likelihood (``agents.bc``) on unsegmented demonstrations with no skill input. Its
per-step negative log-likelihood, with the memory reset at detected boundaries, is what
``skills.boundary.detect_boundaries`` thresholds.

    agent = make_action_model(config, action_space, demos)      # demos: Transition [N, T, ...]
    state, metrics = jax.jit(agent.train)(key)                    # metrics["loss"] [total_steps]
    params = agent.policy_params(state)                           # agent.policy acts (carry: GRU)
    model = ActionModel.create(config, action_space)              # the views SBD scores with
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
from flax import struct

from agents.bc import BCConfig, make_bc
from agents.core import Agent, Policy, policy_spec
from agents.hparams import require, require_fields, static
from agents.networks import MLP, PolicyHead, ResettableGRU, activation_fn, recurrent_torso
from agents.replay import Transition
from envs.core import is_concrete, spaces

__all__ = [
    "ActionModel",
    "ActionModelConfig",
    "ActionModelNet",
    "action_model_policy",
    "episode_starts",
    "make_action_model",
]


@struct.dataclass
class ActionModelConfig(BCConfig):
    """Network sizes (static) and the behaviour-cloning loop (``agents.bc.BCConfig``)."""

    total_steps: int = static(2_000)  # gradient steps
    batch_size: int = static(32)  # whole trajectories per gradient step
    embed: tuple[int, ...] = static((128,))
    gru_hidden: int = static(128)
    head: tuple[int, ...] = static((128,))
    activation: str = static("tanh")

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        BCConfig.validate(self)
        require_fields(self, {"gru_hidden": (lambda v: v >= 1, ">= 1")})
        activation_fn(self.activation)


class ActionModelNet(nn.Module):
    """``recurrent_torso`` -> head MLP -> action distribution."""

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
        carry, x = recurrent_torso(
            carry, obs, resets, self.embed, self.hidden_size, self.activation
        )
        return carry, PolicyHead(self.action_dim, self.discrete)(MLP(self.head, self.activation)(x))


def action_model_policy(
    action_dim: int,
    discrete: bool,
    embed: Sequence[int],
    gru_hidden: int,
    head: Sequence[int],
    activation: str,
) -> Policy:
    """The action model as a policy: samples (or takes the mode of) ``pi(a_t | o_<=t)``; its
    carry is the GRU memory [B, gru_hidden]."""
    embed, head = tuple(embed), tuple(head)
    network = ActionModelNet(action_dim, discrete, embed, gru_hidden, head, activation)

    def act(params, carry, obs, key, deterministic=False):
        no_reset = jnp.zeros((1, obs.shape[0]), bool)
        carry, pi = network.apply(params, carry, obs[None], no_reset)
        action = pi.mode() if deterministic else pi.sample(seed=key)
        return carry, action[0]

    spec = policy_spec(
        action_model_policy,
        action_dim=action_dim,
        discrete=discrete,
        embed=embed,
        gru_hidden=gru_hidden,
        head=head,
        activation=activation,
    )
    return Policy(act, lambda b: ResettableGRU.initial_carry(b, gru_hidden), spec)


class ActionModel(NamedTuple):
    """The network with the views SBD and training need (``create`` builds it)."""

    network: ActionModelNet
    discrete: bool
    hidden_size: int
    policy: Policy

    @staticmethod
    def create(config: ActionModelConfig, action_space: spaces.Space) -> ActionModel:
        """The action model ``config`` describes for ``action_space`` (Discrete or Box)."""
        config.validate()
        discrete = isinstance(action_space, spaces.Discrete)
        action_dim = int(action_space.n) if discrete else int(np.prod(action_space.shape))
        sizes = (config.embed, config.gru_hidden, config.head, config.activation)
        network = ActionModelNet(action_dim, discrete, *sizes)
        policy = action_model_policy(action_dim, discrete, *sizes)
        return ActionModel(network, discrete, config.gru_hidden, policy)

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


def episode_starts(terminated: jax.Array, truncated: jax.Array) -> jax.Array:
    """bool [..., T]: step t is the first of an episode (t == 0 or the episode ended at t - 1)."""
    done = jnp.logical_or(terminated, truncated)
    return jnp.concatenate([jnp.ones_like(done[..., :1]), done[..., :-1]], axis=-1)


def _check_demos(demos: Transition, space: spaces.Space) -> None:
    discrete = isinstance(space, spaces.Discrete)
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
    require(
        shape[0] >= 1 and shape[1] >= 1,
        f"action model: demonstrations of shape {shape} hold no steps; give at least one "
        "trajectory of at least one step",
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
    if is_concrete(demos.obs) and is_concrete(demos.action):  # on the host: also under a trace
        obs, action = np.asarray(demos.obs), np.asarray(demos.action)
        require(
            bool(np.isfinite(obs).all()) and bool(np.isfinite(action).all()),
            "action model: demonstrations hold NaN or inf; drop or repair those steps",
        )
        if discrete:
            low, high = int(action.min()), int(action.max())
            require(
                low >= 0 and high < space.n,
                f"action model: discrete actions range over [{low}, {high}], outside the "
                f"action space's [0, {space.n}); give the space the demonstrations were made in",
            )


def make_action_model(
    config: ActionModelConfig, action_space: spaces.Space, demos: Transition
) -> Agent:
    """Maximum-likelihood BC of the action model on ``demos`` as an ``agents.core.Agent``.

    ``demos`` is a ``Transition`` of whole trajectories [N, T, ...]; episodes inside a trajectory
    (ended by ``terminated | truncated``) reset the memory. Each gradient step is an Adam step on
    the mean per-step NLL of ``batch_size`` trajectories drawn without replacement.
    """
    model = ActionModel.create(config, action_space)
    _check_demos(demos, action_space)
    demos = jax.tree.map(jnp.asarray, demos)  # host arrays are indexed by traced batch indices
    num = demos.obs.shape[0]
    time_major = lambda x: jnp.swapaxes(x, 0, 1)  # [B, T, ...] -> [T, B, ...]

    def sample(key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        idx = jax.random.choice(key, num, (min(batch_size, num),), replace=False)
        resets = episode_starts(demos.terminated[idx], demos.truncated[idx])
        return time_major(demos.obs[idx]), time_major(demos.action[idx]), time_major(resets)

    return make_bc(
        config,
        model.policy,
        lambda key: model.init(key, demos.obs.shape[-1]),
        sample,
        lambda params, batch: model.nll(params, *batch).mean(),
    )
