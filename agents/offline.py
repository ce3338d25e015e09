"""What every offline learner here shares: the dataset on device, batches, evaluation, the loop.

    data = prepare(transitions, env, env_params, normalize_obs=True, reward_scale=1.0)
    batch = sample(data.transitions, key, 256)                   # Transition [256]
    evaluate = make_evaluator(data, env, env_params, act, num_episodes=10, ref_scores=(lo, hi))
    update = make_update(train_step, evaluate, steps_per_update)  # for run_chunked / lax.scan

``prepare`` normalises observations (mean/std of the dataset, as TD3+BC and CORL do), scales
rewards and maps actions from the env's Box ``[low, high]`` to ``[-1, 1]``; learners work in
these units and ``make_evaluator`` maps back when acting in the env.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agents.evaluation import evaluate as evaluate_episodes
from agents.hparams import require
from agents.replay import Transition
from agents.replay.datasets import episode_returns
from envs.core import spaces


class OfflineData(NamedTuple):
    """A dataset in the units a learner trains in, and the maps back to the env's units."""

    transitions: Transition  # [N] on device: normalised obs, scaled reward, actions in [-1, 1]
    obs_mean: np.ndarray  # [obs_dim]
    obs_std: np.ndarray  # [obs_dim]
    action_low: np.ndarray  # [act_dim] the env's bounds
    action_high: np.ndarray  # [act_dim]
    reward_scale: float

    def normalize_obs(self, obs: jax.Array) -> jax.Array:  # [..., obs_dim]
        return (obs - self.obs_mean) / self.obs_std

    def env_action(self, action: jax.Array) -> jax.Array:  # [..., act_dim] in [-1, 1] -> env's
        return self.action_low + 0.5 * (jnp.clip(action, -1.0, 1.0) + 1.0) * (
            self.action_high - self.action_low
        )


class OfflineAgent(NamedTuple):
    """An offline learner's pure functions (TD3+BC, IQL); ``State`` is the learner's own."""

    data: OfflineData  # the dataset in training units, with the maps back to the env's
    act: Any  # (actor params, env obs [B, obs_dim]) -> env action [B, act_dim] (greedy)
    init: Any  # key -> State
    update: Any  # State -> (State, metrics): eval_every gradient steps + one evaluation
    train: Any  # key -> (State, metrics [num_updates])
    train_step: Any  # State -> (State, metrics): one step (TD3+BC: policy_freq critic
    # steps and one actor step)


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
    std_eps: float = 1e-3,
) -> OfflineData:
    """Flat ``[N]`` transitions (``load_dataset``'s) -> ``OfflineData`` on device for ``env``."""
    obs_space, act_space = env.observation_space(env_params), env.action_space(env_params)
    require(
        isinstance(act_space, spaces.Box) and len(act_space.shape) == 1,
        f"offline learners here need a flat continuous (Box) action space, got {act_space}",
    )
    act_dim = int(act_space.shape[0])
    low = np.broadcast_to(np.asarray(act_space.low, np.float32), (act_dim,))
    high = np.broadcast_to(np.asarray(act_space.high, np.float32), (act_dim,))
    require(
        bool(np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()),
        f"the action space's bounds must be finite with low < high; got {low}, {high}",
    )
    obs = np.asarray(transitions.obs, np.float32)
    action = np.asarray(transitions.action, np.float32)
    require(
        obs.ndim == 2 and obs.shape[1:] == tuple(obs_space.shape),
        f"dataset observations have shape {obs.shape}, the env observes {obs_space.shape}; "
        "load the dataset made for this env",
    )
    require(
        action.shape == (obs.shape[0], act_dim),
        f"dataset actions have shape {action.shape}, the env takes [{act_dim}]",
    )
    require(obs.shape[0] > 0, "the dataset is empty")
    if normalize_obs:
        mean, std = obs.mean(0), obs.std(0) + std_eps
    else:
        mean, std = np.zeros(obs.shape[1], np.float32), np.ones(obs.shape[1], np.float32)
    scaled = Transition(
        obs=(obs - mean) / std,
        action=np.clip(2.0 * (action - low) / (high - low) - 1.0, -1.0, 1.0),
        reward=np.asarray(transitions.reward, np.float32) * reward_scale,
        next_obs=(np.asarray(transitions.next_obs, np.float32) - mean) / std,
        terminated=np.asarray(transitions.terminated, bool),
        truncated=np.asarray(transitions.truncated, bool),
    )
    return OfflineData(
        jax.tree.map(lambda x: jnp.asarray(x), scaled),
        mean.astype(np.float32),
        std.astype(np.float32),
        low,
        high,
        float(reward_scale),
    )


def sample(transitions: Transition, key: jax.Array, batch_size: int) -> Transition:
    """``batch_size`` transitions drawn uniformly with replacement: Transition [batch_size]."""
    idx = jax.random.randint(key, (batch_size,), 0, transitions.reward.shape[0])
    return jax.tree.map(lambda x: x[idx], transitions)


def ensemble_member(params: Any, i: int) -> Any:
    """Parameters of member ``i`` of a ``CriticEnsemble``, to apply with a single ``Critic``."""
    (inner,) = params["params"].values()
    return {"params": jax.tree.map(lambda x: x[i], inner)}


# act(params, obs [B, obs_dim] normalised) -> action [B, act_dim] in [-1, 1]
ActFn = Callable[[Any, jax.Array], jax.Array]


def make_evaluator(
    data: OfflineData,
    env: Any,
    env_params: Any,
    act: ActFn,
    num_episodes: int,
    ref_scores: tuple[float, float] | None = None,
) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
    """``evaluate(params, key) -> metrics``: ``num_episodes`` vmapped env episodes.

    Metrics: ``return`` (mean undiscounted return) and, given ``(random, expert)`` reference
    returns, ``normalized_score`` (D4RL's ``100 * (R - random) / (expert - random)``).
    """

    def evaluate(params: Any, key: jax.Array) -> dict[str, jax.Array]:
        def policy(carry, obs, resets, key):
            return carry, data.env_action(act(params, data.normalize_obs(obs)))

        carry = jnp.zeros((num_episodes, 0))
        out = evaluate_episodes(key, env, env_params, policy, carry)
        metrics = {"return": out["return"].mean()}
        if ref_scores is not None:
            lo, hi = ref_scores
            metrics["normalized_score"] = 100.0 * (metrics["return"] - lo) / (hi - lo)
        return metrics

    return evaluate


def make_update(
    train_step: Callable[[Any], tuple[Any, dict]],
    evaluate: Callable[[Any, jax.Array], dict] | None,
    get_params: Callable[[Any], Any],
    steps_per_update: int,
) -> Callable[[Any], tuple[Any, dict]]:
    """``update(state)``: ``steps_per_update`` scanned ``train_step``s, then one evaluation.

    The learner state must be a NamedTuple with a ``key`` field. Metrics are the means of the
    step metrics plus the evaluation's (``return``, ``normalized_score``) when ``evaluate``.
    """

    def update(state: Any) -> tuple[Any, dict]:
        state, stats = jax.lax.scan(lambda s, _: train_step(s), state, None, steps_per_update)
        metrics = {k: v.mean() for k, v in stats.items()}
        if evaluate is not None:
            key, k_eval = jax.random.split(state.key)
            metrics.update(evaluate(get_params(state), k_eval))
            state = state._replace(key=key)
        return state, metrics

    return update
