"""Segment-conditioned policies, and a hierarchical agent that sequences them.

A segment-conditioned policy ``pi(a | o, g)`` is trained by behaviour cloning on segmented
demonstrations, each step conditioned on ``g``, the observation its segment ended in (hindsight
relabelling, ``skills.segments.hindsight_goals``): the gridworld counterpart of the
goal-conditioned controllers (STEVE-1) that the SBD paper trains on its segments. Clean segments
give consistent goals; segments that straddle a skill switch pair actions with goals they do not
lead to.

The hierarchical agent executes a plan, a sequence of goal observations: it conditions the
policy on the current goal and moves on once the observation matches it (within a tolerance).
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
from agents.networks import MLP, PolicyHead, activation_fn
from envs.core import is_concrete, spaces

__all__ = [
    "GoalData",
    "GoalPolicy",
    "GoalPolicyConfig",
    "GoalPolicyNet",
    "HierarchicalAgent",
    "make_goal_policy",
    "make_train",
]


@struct.dataclass
class GoalPolicyConfig:
    """Network and training loop (static) and optimiser settings (vmappable)."""

    hidden: tuple[int, ...] = static((256, 256))
    activation: str = static("relu")
    num_updates: int = static(3_000)
    batch_size: int = static(256)  # steps per update
    lr: float = sweepable(1e-3)
    max_grad_norm: float = sweepable(1.0)

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        for name in ("num_updates", "batch_size"):
            require(getattr(self, name) >= 1, f"GoalPolicyConfig.{name} must be >= 1")
        activation_fn(self.activation)
        for name in ("lr", "max_grad_norm"):
            v = getattr(self, name)
            if is_concrete(v):
                require(bool(np.all(np.asarray(v) > 0)), f"GoalPolicyConfig.{name}={v} must be > 0")


class GoalPolicyNet(nn.Module):
    """MLP over [obs, goal] -> action distribution."""

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, goal: jax.Array) -> distrax.Distribution:
        # obs [..., D], goal [..., D] -> dist over [...]
        x = MLP(self.hidden, self.activation)(jnp.concatenate([obs, goal], axis=-1))
        return PolicyHead(self.action_dim, self.discrete)(x)


class GoalData(NamedTuple):
    """Segmented trajectories [N, T]: step (n, t) is conditioned on ``next_obs[n, end[n, t]]``.

    Goals are indices into the trajectories (``skills.segments.segment_end``), so several
    segmentations of one dataset share its arrays.
    """

    obs: jax.Array  # [N, T, D]
    action: jax.Array  # [N, T] (discrete) or [N, T, A]
    next_obs: jax.Array  # [N, T, D]: the observation each action led to (pre-reset)
    end: jax.Array  # int32 [N, T]: the last step of each step's segment


class GoalPolicy(NamedTuple):
    """Inference view: ``act`` with explicit params."""

    network: GoalPolicyNet
    discrete: bool

    def init(self, key: jax.Array, obs_dim: int) -> Any:
        dummy = jnp.zeros((1, obs_dim))
        return self.network.init(key, dummy, dummy)

    def act(
        self,
        params: Any,
        obs: jax.Array,
        goal: jax.Array,
        key: jax.Array,
        deterministic: bool = False,
    ) -> jax.Array:
        """obs [..., D], goal [..., D] -> action [...] (discrete) or [..., A]."""
        pi = self.network.apply(params, obs, goal)
        return pi.mode() if deterministic else pi.sample(seed=key)


def make_goal_policy(config: GoalPolicyConfig, action_space: spaces.Space) -> GoalPolicy:
    """The policy ``config`` describes for ``action_space`` (Discrete or Box)."""
    config.validate()
    discrete = isinstance(action_space, spaces.Discrete)
    action_dim = int(action_space.n) if discrete else int(np.prod(action_space.shape))
    return GoalPolicy(
        GoalPolicyNet(action_dim, discrete, config.hidden, config.activation), discrete
    )


def make_train(
    config: GoalPolicyConfig, action_space: spaces.Space
) -> Callable[[jax.Array, GoalData], tuple[Any, dict[str, jax.Array]]]:
    """``train(key, data) -> (params, {"loss": [num_updates]})``: goal-conditioned BC.

    Each Adam step uses ``batch_size`` steps drawn uniformly from the trajectories.
    """
    policy = make_goal_policy(config, action_space)
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.lr))

    def train(key: jax.Array, data: GoalData) -> tuple[Any, dict[str, jax.Array]]:
        require(
            data.obs.ndim == 3
            and data.next_obs.shape == data.obs.shape
            and data.end.shape == data.obs.shape[:2],
            f"goal policy: expected obs and next_obs [N, T, D] and end [N, T], got "
            f"{data.obs.shape}, {data.next_obs.shape} and {data.end.shape}",
        )
        num, length = data.end.shape

        def loss_fn(params, n, t):
            goal = data.next_obs[n, data.end[n, t]]
            pi = policy.network.apply(params, data.obs[n, t], goal)
            return -pi.log_prob(data.action[n, t]).mean()

        def update(state, key):
            params, opt_state = state
            key_n, key_t = jax.random.split(key)
            n = jax.random.randint(key_n, (config.batch_size,), 0, num)
            t = jax.random.randint(key_t, (config.batch_size,), 0, length)
            loss, grads = jax.value_and_grad(loss_fn)(params, n, t)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        key_init, key_train = jax.random.split(key)
        params = policy.init(key_init, data.obs.shape[-1])
        (params, _), loss = jax.lax.scan(
            update, (params, tx.init(params)), jax.random.split(key_train, config.num_updates)
        )
        return params, {"loss": loss}

    return train


class HierarchicalAgent(NamedTuple):
    """Executes a plan of goals [L, D] with a goal-conditioned policy, one goal at a time."""

    policy: GoalPolicy
    tolerance: float = 1e-4  # the goal is reached when every observation entry is this close

    def act(
        self,
        params: Any,
        plan: jax.Array,
        index: jax.Array,
        obs: jax.Array,
        key: jax.Array,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array]:
        """One env: plan [L, D], index [] (goals reached so far), obs [D] -> (index, action).

        ``index`` advances when ``obs`` matches the current goal; after the last goal the agent
        keeps conditioning on it.
        """
        num_goals = plan.shape[0]
        current = plan[jnp.minimum(index, num_goals - 1)]
        reached = (index < num_goals) & jnp.all(jnp.abs(obs - current) <= self.tolerance)
        index = index + reached.astype(index.dtype)
        goal = plan[jnp.minimum(index, num_goals - 1)]
        return index, self.policy.act(params, obs, goal, key, deterministic)
