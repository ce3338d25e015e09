"""Segment-conditioned policies, and a hierarchical policy that sequences them.

A segment-conditioned policy ``pi(a | o, g)`` is trained by behaviour cloning (``agents.bc``) on
segmented demonstrations, each step conditioned on ``g``, the observation its segment ended in
(hindsight relabelling, ``skills.segments.hindsight_goals``): the gridworld counterpart of the
goal-conditioned controllers (STEVE-1) that the SBD paper trains on its segments. Clean segments
give consistent goals; segments that straddle a skill switch pair actions with goals they do not
lead to. As an ``agents.core.Policy`` it takes ``obs`` = the concatenation [observation, goal]
([B, 2 D]).

The hierarchical policy executes a plan, a sequence of goal observations held in its carry
(``Plan``; write one with ``set_plan``): it conditions a goal-conditioned policy on the current
goal and moves on once the observation matches it (within a tolerance).

    agent = make_goal_policy(config, action_space, GoalData(obs, action, next_obs, end))
    state, metrics = jax.jit(agent.train)(key)
    params = agent.policy_params(state)
    carry, action = agent.policy.act(params, (), jnp.concatenate([obs, goal], -1), key, True)
    tour = hierarchical_policy(agent.policy.spec, plan_length=3, obs_dim=D)
    carry = set_plan(tour.initial_carry(B), goals)               # goals [B, 3, D]
    carry, action = tour.act(params, carry, obs, key, deterministic=True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agents.bc import BCConfig, make_bc
from agents.core import Agent, Policy, build_policy, no_carry, policy_spec
from agents.hparams import require, static
from agents.networks import MLP, PolicyHead, activation_fn
from envs.core import spaces

__all__ = [
    "GoalData",
    "GoalPolicyConfig",
    "GoalPolicyNet",
    "Plan",
    "goal_policy",
    "hierarchical_policy",
    "make_goal_policy",
    "set_plan",
]


@struct.dataclass
class GoalPolicyConfig(BCConfig):
    """The network (static) and the behaviour-cloning loop (``agents.bc.BCConfig``)."""

    total_steps: int = static(3_000)  # gradient steps
    batch_size: int = static(256)  # steps per gradient step
    hidden: tuple[int, ...] = static((256, 256))
    activation: str = static("relu")

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        BCConfig.validate(self)
        activation_fn(self.activation)


class GoalPolicyNet(nn.Module):
    """MLP over [obs, goal] -> action distribution."""

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs_goal: jax.Array) -> distrax.Distribution:
        # obs_goal [..., 2 D] (observation, then goal) -> dist over [...]
        x = MLP(self.hidden, self.activation)(obs_goal)
        return PolicyHead(self.action_dim, self.discrete)(x)


def goal_policy(action_dim: int, discrete: bool, hidden: Sequence[int], activation: str) -> Policy:
    """A goal-conditioned policy: ``obs`` [B, 2 D] is [observation, goal]; samples (or takes
    the mode of) its action distribution; no memory."""
    hidden = tuple(hidden)
    network = GoalPolicyNet(action_dim, discrete, hidden, activation)

    def act(params, carry, obs, key, deterministic=False):
        pi = network.apply(params, obs)
        return carry, pi.mode() if deterministic else pi.sample(seed=key)

    spec = policy_spec(
        goal_policy, action_dim=action_dim, discrete=discrete, hidden=hidden, activation=activation
    )
    return Policy(act, no_carry, spec)


class GoalData(NamedTuple):
    """Segmented trajectories [N, T]: step (n, t) is conditioned on ``next_obs[n, end[n, t]]``.

    Goals are indices into the trajectories (``skills.segments.segment_end``), so several
    segmentations of one dataset share its arrays.
    """

    obs: jax.Array  # [N, T, D]
    action: jax.Array  # [N, T] (discrete) or [N, T, A]
    next_obs: jax.Array  # [N, T, D]: the observation each action led to (pre-reset)
    end: jax.Array  # int32 [N, T]: the last step of each step's segment


def make_goal_policy(config: GoalPolicyConfig, action_space: spaces.Space, data: GoalData) -> Agent:
    """Goal-conditioned BC on ``data`` as an ``agents.core.Agent`` (policy: ``goal_policy``).

    Each gradient step is an Adam step on ``batch_size`` steps drawn uniformly from the
    trajectories, each with its hindsight goal.
    """
    config.validate()
    require(
        data.obs.ndim == 3
        and data.next_obs.shape == data.obs.shape
        and data.end.shape == data.obs.shape[:2],
        f"goal policy: expected obs and next_obs [N, T, D] and end [N, T], got "
        f"{data.obs.shape}, {data.next_obs.shape} and {data.end.shape}",
    )
    discrete = isinstance(action_space, spaces.Discrete)
    action_dim = int(action_space.n) if discrete else int(np.prod(action_space.shape))
    policy = goal_policy(action_dim, discrete, config.hidden, config.activation)
    network = GoalPolicyNet(action_dim, discrete, config.hidden, config.activation)
    num, length, obs_dim = data.obs.shape

    def sample(key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        key_n, key_t = jax.random.split(key)
        n = jax.random.randint(key_n, (batch_size,), 0, num)
        t = jax.random.randint(key_t, (batch_size,), 0, length)
        goal = data.next_obs[n, data.end[n, t]]
        return jnp.concatenate([data.obs[n, t], goal], axis=-1), data.action[n, t]

    def nll(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        obs_goal, action = batch
        return -network.apply(params, obs_goal).log_prob(action).mean()

    init = lambda key: network.init(key, jnp.zeros((1, 2 * obs_dim)))
    return make_bc(config, policy, init, sample, nll)


class Plan(NamedTuple):
    """The carry of a hierarchical policy: its plan, how far it got, the goal policy's carry."""

    goals: jax.Array  # [B, L, D]: goal observations, in order
    index: jax.Array  # int32 [B]: goals reached so far
    inner: Any  # the goal-conditioned policy's carry


def set_plan(carry: Plan, goals: jax.Array) -> Plan:
    """``carry`` with the plan ``goals`` [B, L, D], none of them reached yet."""
    require(
        jnp.shape(goals) == jnp.shape(carry.goals),
        f"set_plan: goals must be [B, plan_length, obs_dim] = {jnp.shape(carry.goals)}, got "
        f"{jnp.shape(goals)}",
    )
    return Plan(jnp.asarray(goals, carry.goals.dtype), jnp.zeros_like(carry.index), carry.inner)


def hierarchical_policy(
    goal_spec: Mapping[str, Any], plan_length: int, obs_dim: int, tolerance: float = 1e-4
) -> Policy:
    """Executes the plan in its carry (``Plan``, written by ``set_plan``) with the
    goal-conditioned policy ``goal_spec`` describes (its ``Policy.spec``), one goal at a time.

    A goal is reached when every observation entry is within ``tolerance`` of it; the index then
    advances, and after the last goal the policy keeps conditioning on it. Acts with the goal
    policy's parameters; ``obs`` [B, obs_dim] is the plain observation. ``reset_carry`` clears
    the plan: set a new one for each episode.
    """
    require(
        plan_length >= 1 and obs_dim >= 1,
        f"hierarchical_policy: plan_length={plan_length} and obs_dim={obs_dim} must be >= 1",
    )
    inner = build_policy(goal_spec)

    def act(params, carry: Plan, obs, key, deterministic=False):
        last = plan_length - 1
        pick = lambda i: jnp.take_along_axis(carry.goals, i[:, None, None], axis=1)[:, 0]
        current = pick(jnp.minimum(carry.index, last))
        reached = (carry.index < plan_length) & jnp.all(jnp.abs(obs - current) <= tolerance, -1)
        index = carry.index + reached.astype(carry.index.dtype)
        goal = pick(jnp.minimum(index, last))
        obs_goal = jnp.concatenate([obs, goal], axis=-1)
        inner_carry, action = inner.act(params, carry.inner, obs_goal, key, deterministic)
        return Plan(carry.goals, index, inner_carry), action

    def initial_carry(batch_size: int) -> Plan:
        goals = jnp.zeros((batch_size, plan_length, obs_dim), jnp.float32)
        return Plan(goals, jnp.zeros((batch_size,), jnp.int32), inner.initial_carry(batch_size))

    spec = policy_spec(
        hierarchical_policy,
        goal_spec=dict(goal_spec),
        plan_length=plan_length,
        obs_dim=obs_dim,
        tolerance=tolerance,
    )
    return Policy(act, initial_carry, spec)
