"""What every offline learner here shares: the checked dataset on device, batches, the Agent.

    data = prepare(transitions, env, env_params, normalize_obs=True, reward_scale=1.0)
    batch = sample(data.transitions, key, 256)                   # Transition [256]
    units = data.policy_units()              # obs_mean, obs_std, action_low, action_high (lists)
    agent = make_agent(config, policy, init, learn, lambda s: s.actor.params, env, env_params)

``prepare`` checks the dataset against the env (shapes, NaN/inf, action bounds) before anything
compiles, normalises observations (``envs.wrappers.Normalizer`` fitted to the dataset, as TD3+BC
and CORL do), scales rewards and maps actions from the env's Box ``[low, high]`` to ``[-1, 1]``.
Learners train in these units; their policies (``td3_bc_policy``, ``iql_policy``) carry the
same normalisation and ``env_action`` inside ``act``, so they act in the env's own units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agents.core import Agent, Policy
from agents.evaluation import evaluate
from agents.hparams import require
from agents.replay import Transition
from agents.replay.datasets import episode_returns, normalized_score
from envs.core import spaces
from envs.wrappers import Normalizer

__all__ = [
    "ACTION_SLACK",
    "OBS_STD_EPS",
    "OfflineData",
    "check_dataset",
    "check_ref_scores",
    "ensemble_member",
    "env_action",
    "env_units",
    "locomotion_reward_scale",
    "make_agent",
    "policy_units",
    "prepare",
    "sample",
]

OBS_STD_EPS = 1e-3  # added to the dataset's observation std (TD3+BC, CORL)
# Dataset actions may overshoot the env's bounds by this fraction of half the range (float
# rounding, generated data) and are clipped; further out they are in other units: an error.
ACTION_SLACK = 0.5


def env_action(action: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """``action`` [..., act_dim] in [-1, 1] (clipped there) as the env's ``[low, high]``."""
    return low + 0.5 * (jnp.clip(action, -1.0, 1.0) + 1.0) * (high - low)


def env_units(
    obs_mean: list[float], obs_std: list[float], action_low: list[float], action_high: list[float]
) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """``(normalize, to_env)`` for a policy: env obs [..., obs_dim] -> the learner's units, and
    its actions [..., act_dim] in [-1, 1] -> the env's ``[action_low, action_high]``."""
    obs = Normalizer(jnp.asarray(obs_mean, jnp.float32), jnp.asarray(obs_std, jnp.float32))
    low, high = jnp.asarray(action_low, jnp.float32), jnp.asarray(action_high, jnp.float32)
    return obs.normalize, lambda action: env_action(action, low, high)


class OfflineData(NamedTuple):
    """A dataset in the units a learner trains in, and what maps the env's units to them."""

    transitions: Transition  # [N] on device: normalised obs, scaled reward, actions in [-1, 1]
    obs: Normalizer  # the dataset's observation statistics ([obs_dim])
    action_low: np.ndarray  # [act_dim] the env's bounds
    action_high: np.ndarray  # [act_dim]
    reward_scale: float

    def policy_units(self) -> dict[str, list[float]]:
        """The keyword arguments a policy builder takes to act in the env's units (JSON)."""
        return policy_units(self.obs, self.action_low, self.action_high)


def policy_units(obs: Normalizer, low: np.ndarray, high: np.ndarray) -> dict[str, list[float]]:
    """A policy builder's ``env_units`` keyword arguments (JSON): the observation statistics the
    learner trained in and the env's action bounds."""
    return {
        "obs_mean": np.asarray(obs.mean).tolist(),
        "obs_std": np.asarray(obs.std).tolist(),
        "action_low": np.asarray(low).tolist(),
        "action_high": np.asarray(high).tolist(),
    }


def action_bounds(env: Any, env_params: Any) -> tuple[np.ndarray, np.ndarray]:
    """The env's flat Box action bounds ``(low, high)`` [act_dim] (float32)."""
    act_space = env.action_space(env_params)
    require(
        isinstance(act_space, spaces.Box) and len(act_space.shape) == 1,
        f"offline learners here need a flat continuous (Box) action space, got {act_space}",
    )
    act_dim = int(act_space.shape[0])
    low = np.broadcast_to(np.asarray(act_space.low, np.float32), (act_dim,)).copy()
    high = np.broadcast_to(np.asarray(act_space.high, np.float32), (act_dim,)).copy()
    require(
        bool(np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()),
        f"the action space's bounds must be finite with low < high; got {low}, {high}",
    )
    return low, high


def check_dataset(transitions: Transition, env: Any, env_params: Any) -> Transition:
    """``transitions`` [N] as host float32 arrays, after checking them against ``env``.

    Raises a ValueError naming the field for: shapes that do not fit the env's spaces or each
    other, an empty dataset, NaN/inf, and actions outside the env's bounds by more than
    ``ACTION_SLACK`` of half their range (data in other units).
    """
    low, high = action_bounds(env, env_params)
    obs_shape = tuple(env.observation_space(env_params).shape)
    data = Transition(
        *(np.asarray(x, bool if f in ("terminated", "truncated") else np.float32)
          for f, x in zip(Transition._fields, transitions))
    )  # fmt: skip
    n = data.reward.shape[0] if data.reward.ndim == 1 else -1
    require(
        data.reward.ndim == 1 and n > 0,
        f"dataset rewards have shape {data.reward.shape}; offline learners take flat, non-empty "
        "[N] transitions (load_dataset's; flatten [T, E] ones first)",
    )
    expected = {
        "obs": (n, *obs_shape),
        "action": (n, low.size),
        "reward": (n,),
        "next_obs": (n, *obs_shape),
        "terminated": (n,),
        "truncated": (n,),
    }
    for field, shape in expected.items():
        got = getattr(data, field).shape
        require(
            got == shape,
            f"dataset {field} has shape {got}, expected {shape} (the env observes {obs_shape} "
            f"and takes [{low.size}] actions); load the dataset made for this env",
        )
    for field in ("obs", "action", "reward", "next_obs"):
        x = getattr(data, field)
        bad = ~np.isfinite(x.reshape(n, -1)).all(1)
        require(
            not bad.any(),
            f"dataset {field} holds NaN or inf in {int(bad.sum())} transition(s) (first at index "
            f"{int(np.argmax(bad))}); drop or fix those transitions",
        )
    slack = ACTION_SLACK * 0.5 * (high - low)
    outside = (data.action < low - slack) | (data.action > high + slack)
    require(
        not outside.any(),
        f"{int(outside.any(1).sum())} dataset action(s) lie far outside the env's bounds "
        f"[{low.tolist()}, {high.tolist()}] (range {data.action.min(0).tolist()} to "
        f"{data.action.max(0).tolist()}); store actions in the env's units, or clip them",
    )
    return data


def check_ref_scores(ref_scores: tuple[float, float] | None) -> None:
    """Raise a ValueError unless ``ref_scores`` is None or finite ``(random, expert)`` returns
    with expert > random (what ``normalized_score`` divides by)."""
    if ref_scores is None:
        return
    try:
        lo, hi = (float(x) for x in ref_scores)
    except (TypeError, ValueError):
        lo, hi = np.nan, np.nan
    require(
        bool(np.isfinite([lo, hi]).all()) and hi > lo,
        f"ref_scores={ref_scores!r} must be finite (random, expert) returns with expert > "
        "random, or None (no normalized_score metric)",
    )


def locomotion_reward_scale(transitions: Transition, target: float = 1000.0) -> float:
    """IQL's locomotion reward scale, ``target / (max return - min return)`` over the episodes."""
    returns = episode_returns(transitions)
    require(
        returns.size >= 2 and returns.max() > returns.min(),
        f"reward scaling needs two episodes with different returns, found {returns.size} "
        "complete episode(s); set the reward scale explicitly",
    )
    return float(target / (returns.max() - returns.min()))


def prepare(
    transitions: Transition,
    env: Any,
    env_params: Any,
    *,
    normalize_obs: bool = True,
    reward_scale: float = 1.0,
) -> OfflineData:
    """Flat ``[N]`` transitions (``load_dataset``'s) -> checked ``OfflineData`` on device.

    Runs eagerly even inside ``jax.jit``/``vmap`` (a learner built inside a traced function,
    e.g. per seed on a traced base, still gets a checked, concrete dataset)."""
    with jax.ensure_compile_time_eval():
        return _prepare(transitions, env, env_params, normalize_obs, reward_scale)


def _prepare(
    transitions: Transition, env: Any, env_params: Any, normalize_obs: bool, reward_scale: float
) -> OfflineData:
    data = check_dataset(transitions, env, env_params)
    low, high = action_bounds(env, env_params)
    if normalize_obs:
        obs = Normalizer.fit(data.obs, eps=OBS_STD_EPS)
    else:
        obs = Normalizer.identity(data.obs.shape[1:])
    scaled = Transition(
        obs=obs.normalize(jnp.asarray(data.obs)),
        action=jnp.asarray(np.clip(2.0 * (data.action - low) / (high - low) - 1.0, -1.0, 1.0)),
        reward=jnp.asarray(data.reward * reward_scale),
        next_obs=obs.normalize(jnp.asarray(data.next_obs)),
        terminated=jnp.asarray(data.terminated),
        truncated=jnp.asarray(data.truncated),
    )
    return OfflineData(scaled, obs, low, high, float(reward_scale))


def sample(transitions: Transition, key: jax.Array, batch_size: int) -> Transition:
    """``batch_size`` transitions drawn uniformly with replacement: Transition [batch_size]."""
    idx = jax.random.randint(key, (batch_size,), 0, transitions.reward.shape[0])
    return jax.tree.map(lambda x: x[idx], transitions)


def ensemble_member(params: Any, i: int) -> Any:
    """Parameters of member ``i`` of a ``CriticEnsemble``, to apply with a single ``Critic``."""
    (inner,) = params["params"].values()
    return {"params": jax.tree.map(lambda x: x[i], inner)}


def make_agent(
    config: Any,
    policy: Policy,
    init: Callable[[jax.Array], Any],
    learn: Callable[[Any], tuple[Any, dict]],
    policy_params: Callable[[Any], Any],
    env: Any,
    env_params: Any,
    ref_scores: tuple[float, float] | None = None,
    learns_per_update: int | None = None,
) -> Agent:
    """The ``Agent`` of an offline learner whose state is a NamedTuple with a ``key``.

    ``config`` gives ``eval_every`` (gradient steps per ``update``), ``num_updates`` and
    ``eval_episodes``. ``update`` is ``learns_per_update`` (default ``eval_every``) scanned
    ``learn``s (their metrics averaged), then, when ``eval_episodes > 0``, one greedy
    evaluation of ``policy`` in ``env``: ``return`` (mean undiscounted return) and, given
    ``(random, expert)`` ``ref_scores``, ``normalized_score``.
    """
    eval_episodes = config.eval_episodes
    learns_per_update = config.eval_every if learns_per_update is None else learns_per_update

    def update(state: Any) -> tuple[Any, dict]:
        state, stats = jax.lax.scan(lambda s, _: learn(s), state, None, learns_per_update)
        metrics = {k: v.mean() for k, v in stats.items()}
        if eval_episodes > 0:
            key, k_eval = jax.random.split(state.key)
            params = policy_params(state)
            returns = evaluate(k_eval, env, env_params, policy, params, eval_episodes)["return"]
            metrics["return"] = returns.mean()
            if ref_scores is not None:
                metrics["normalized_score"] = normalized_score(None, metrics["return"], *ref_scores)
            state = state._replace(key=key)
        return state, metrics

    return Agent(
        policy,
        init,
        learn,
        update,
        policy_params,
        num_updates=config.num_updates,
        steps_per_update=config.eval_every,
        step_unit="gradient steps",
    )
