"""Environment wrappers (episode statistics, observation normalisation) and Gymnasium adapters.

Any gymnax environment is usable by every agent here as it is, with no adapter class:
``envs.core.Environment`` subclasses gymnax's ``Environment``, so both share one functional
interface (``reset(key, params)``, ``step(key, state, action, params)``). Auto-reset needs no
wrapper either: every env's ``step`` auto-resets and keeps ``info["final_observation"]``.

- ``EpisodeStats``: gymnax's ``LogWrapper`` (its statistics are correct and reused as they are),
  plus a ``render`` that unwraps the wrapper state and attribute forwarding that survives
  ``copy.deepcopy``/``pickle`` (gymnax's ``__getattr__`` recurses forever on both).
- ``episode_metrics``: the mean return and length of the episodes ``EpisodeStats`` saw end.
- ``Normalizer``: the one per-dimension normalisation (fitted to data, or from ``RunningStats``);
  ``NormalizeObservation``: running mean/variance normalisation, statistics in the env state.
- ``to_gymnasium`` / ``to_gymnasium_vector``: any env here (or any gymnax env) as a
  ``gymnasium.Env`` / ``gymnasium.vector.VectorEnv``. gymnax's own ``GymnaxToGymWrapper`` fails
  ``gymnasium.utils.env_checker.check_env`` (no ``np_random`` seeding, jax arrays out), and its
  vector wrapper declares no ``autoreset_mode`` and drops the final observation, hence these.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from gymnax.wrappers.purerl import GymnaxWrapper, LogEnvState, LogWrapper

from envs.core import EnvParams, EnvState, check_action, spaces

__all__ = [
    "CheckedActions",
    "EpisodeStats",
    "GymnasiumEnv",
    "GymnasiumVectorEnv",
    "LogEnvState",
    "NormalizeObservation",
    "NormalizeObservationState",
    "Normalizer",
    "RunningStats",
    "Wrapper",
    "episode_metrics",
    "pool_stats",
    "to_gymnasium",
    "to_gymnasium_space",
    "to_gymnasium_vector",
]


class Wrapper(GymnaxWrapper):
    """Base wrapper: forwards unknown attributes to the wrapped env; states hold ``env_state``."""

    def __getattr__(self, name: str) -> Any:
        # Dunder and ``_env`` look-ups happen before ``__init__`` during copy/pickle; forwarding
        # them would recurse forever.
        if name.startswith("__") or name == "_env":
            raise AttributeError(name)
        return getattr(self._env, name)

    def render(self, state: Any, params: EnvParams | None = None) -> jax.Array:
        """The wrapped env's RGB image (uint8, [H, W, 3]) of ``state.env_state``."""
        return self._env.render(state.env_state, params)


class CheckedActions(Wrapper):
    """A gymnax environment whose ``step`` checks actions as this package's envs do
    (``envs.core.check_action``: shape and kind at trace time, a discrete action's range when
    concrete or under ``checkify``); states pass through unchanged. ``envs.make("gymnax:...")``
    returns gymnax's envs wrapped in it."""

    def reset(self, key: jax.Array, params: EnvParams | None = None) -> tuple[jax.Array, Any]:
        return self._env.reset(key, params)

    def step(self, key: jax.Array, state: Any, action: Any, params: EnvParams | None = None):
        params = self.default_params if params is None else params
        check_action(self._env.action_space(params), action, self._env.name)
        return self._env.step(key, state, action, params)

    def render(self, state: Any, params: EnvParams | None = None) -> jax.Array:
        if not callable(getattr(self._env, "render", None)):
            raise NotImplementedError(
                f"{self._env.name} does not render to an array (gymnax draws its envs with "
                "gymnax.visualize.Visualizer, outside jit)"
            )
        return self._env.render(state, params)


class EpisodeStats(Wrapper, LogWrapper):
    """Episode return/length statistics: gymnax's ``LogWrapper``, reused unchanged.

    ``step`` adds to ``info``: ``returned_episode`` (this transition ended an episode),
    ``returned_episode_returns`` / ``returned_episode_lengths`` (of the last finished episode,
    0 before any) and ``returned_episode_valid`` (true once an episode has finished).
    """


def episode_metrics(info: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Mean ``return`` and ``length`` of the episodes that ended in a batch of ``EpisodeStats``
    infos (any leading shape, e.g. [T, E]), and their number ``episodes``; NaN when none did.
    Continuous envs add ``clipped_actions``: action entries outside the box in the batch."""
    finished = info["returned_episode"]
    num = finished.sum()
    mean = lambda x: jnp.where(num > 0, (x * finished).sum() / jnp.maximum(num, 1), jnp.nan)
    metrics = {
        "episodes": num,
        "return": mean(info["returned_episode_returns"]),
        "length": mean(info["returned_episode_lengths"]),
    }
    if "clipped_actions" in info:  # continuous envs: action entries clipped into the box
        metrics["clipped_actions"] = info["clipped_actions"].sum()
    return metrics


@struct.dataclass
class Normalizer:
    """Per-dimension affine normalisation ``(x - mean) / std``: observations, data, features."""

    mean: jax.Array  # [*shape]
    std: jax.Array  # [*shape]

    def normalize(self, x: jax.Array) -> jax.Array:  # [..., *shape] -> [..., *shape]
        return (x - self.mean) / self.std

    def unnormalize(self, x: jax.Array) -> jax.Array:  # [..., *shape] -> [..., *shape]
        return x * self.std + self.mean

    @classmethod
    def identity(cls, shape: tuple[int, ...]) -> Normalizer:
        """Mean 0 and std 1: leaves data unchanged."""
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32))

    @classmethod
    def fit(
        cls,
        data: jax.Array,
        *,
        ddof: int = 0,
        eps: float = 0.0,
        skip_dims: tuple[int, ...] = (),
        size: jax.Array | int | None = None,
    ) -> Normalizer:
        """Mean and ``std + eps`` over axis 0 of ``data`` [N, D]'s first ``size`` rows (all if None;
        ``size`` may be traced, e.g. a partly filled buffer); ``skip_dims`` keep mean 0, std 1."""
        data = jnp.asarray(data, jnp.float32)
        if data.ndim != 2 or data.shape[0] == 0:
            raise ValueError(f"Normalizer.fit needs a non-empty [N, D] array, got {data.shape}")
        for d in skip_dims:
            if not -data.shape[1] <= d < data.shape[1]:
                raise ValueError(
                    f"skip_dims entry {d} is out of range for dimension {data.shape[1]}"
                )
        n = data.shape[0] if size is None else size
        valid = (jnp.arange(data.shape[0]) < n)[:, None]
        count = jnp.maximum(jnp.asarray(n, jnp.float32), 1.0)
        mean = jnp.where(valid, data, 0.0).sum(0) / count
        var = jnp.where(valid, jnp.square(data - mean), 0.0).sum(0) / jnp.maximum(count - ddof, 1.0)
        skip = jnp.asarray(skip_dims, jnp.int32)
        std = jnp.sqrt(var) + eps
        return cls(mean.at[skip].set(0.0), std.at[skip].set(1.0))


@struct.dataclass
class RunningStats:
    """Running mean and (population) variance of observations seen so far (Welford)."""

    mean: jax.Array  # [*obs_shape] float32
    var: jax.Array  # [*obs_shape] float32
    count: jax.Array  # [] int32, observations merged so far

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> RunningStats:
        """Empty statistics (mean 0, variance 1, count 0) for observations of ``shape``."""
        return cls(
            mean=jnp.zeros(shape, jnp.float32),
            var=jnp.ones(shape, jnp.float32),
            count=jnp.zeros((), jnp.int32),
        )

    def update(self, obs: jax.Array) -> RunningStats:
        """Merge one observation (Welford's update)."""
        count = self.count + 1
        delta = obs - self.mean
        mean = self.mean + delta / count
        m2 = self.var * self.count + delta * (obs - mean)
        return RunningStats(mean=mean, var=m2 / count, count=count)

    def normalizer(self, epsilon: float) -> Normalizer:
        """The ``Normalizer`` of these statistics: std ``sqrt(var + epsilon)``."""
        return Normalizer(self.mean, jnp.sqrt(self.var + epsilon))

    def normalize(self, obs: jax.Array, epsilon: float, clip: float) -> jax.Array:
        """``(obs - mean) / sqrt(var + epsilon)``, clipped to ``[-clip, clip]``."""
        return jnp.clip(self.normalizer(epsilon).normalize(obs), -clip, clip)


def pool_stats(stats: RunningStats) -> RunningStats:
    """Merge statistics batched along axis 0 (e.g. one per vmapped env) into one (parallel merge).

    Use it to freeze one set of statistics for evaluation after training on a batch of envs.
    """
    if stats.count.ndim != 1:
        raise ValueError(
            f"pool_stats expects statistics batched along axis 0 (count of shape [B]), got count "
            f"of shape {stats.count.shape}; pass the stats of a vmapped NormalizeObservation state."
        )
    shape = (-1,) + (1,) * (stats.mean.ndim - 1)
    weights = stats.count.astype(jnp.float32).reshape(shape)  # [B, 1, ...]
    total = jnp.maximum(weights.sum(0), 1.0)
    mean = (weights * stats.mean).sum(0) / total
    m2 = (weights * (stats.var + (stats.mean - mean) ** 2)).sum(0)
    count = stats.count.sum()
    var = jnp.where(count > 0, m2 / total, 1.0)  # no observations: keep create()'s variance
    return RunningStats(mean=mean, var=var, count=count)


@struct.dataclass
class NormalizeObservationState:
    """The wrapped env's state and this instance's observation statistics."""

    env_state: EnvState
    stats: RunningStats


class NormalizeObservation(Wrapper):
    """Normalise observations by a running mean and variance held in the env state.

    Statistics are per env instance: under ``jax.vmap`` each copy normalises by the observations
    it has seen itself (``pool_stats`` merges them). They are updated with every observation
    returned by ``reset``/``step`` (after auto-reset, the first observation of the new episode);
    ``info["final_observation"]`` is normalised with the same statistics. With ``frozen=True``
    the statistics passed to ``reset`` are used and never updated (for evaluation).
    """

    def __init__(
        self,
        env: Any,
        epsilon: float = 1e-8,
        clip: float = 10.0,
        frozen: bool = False,
    ):
        super().__init__(env)
        if not epsilon > 0:
            raise ValueError(f"NormalizeObservation: epsilon must be > 0, got {epsilon}.")
        if not clip > 0:
            raise ValueError(f"NormalizeObservation: clip must be > 0, got {clip}.")
        self.epsilon = float(epsilon)
        self.clip = float(clip)
        self.frozen = bool(frozen)

    def observation_space(self, params: EnvParams) -> spaces.Box:
        """A Box of the wrapped observation shape with bounds ``[-clip, clip]``."""
        space = self._env.observation_space(params)
        if not isinstance(space, spaces.Box):
            raise ValueError(
                f"NormalizeObservation needs a Box observation space, {self._env.name} has "
                f"{space!r}; flatten or encode the observation into a float vector first."
            )
        return spaces.Box(-self.clip, self.clip, space.shape, jnp.float32)

    @partial(jax.jit, static_argnames=("self",))
    def reset(
        self,
        key: jax.Array,
        params: EnvParams | None = None,
        stats: RunningStats | None = None,
    ) -> tuple[jax.Array, NormalizeObservationState]:
        """Reset the wrapped env; start from ``stats`` (e.g. pooled training stats) if given."""
        params = self._env.default_params if params is None else params
        self.observation_space(params)  # raises unless observations are a Box
        obs, env_state = self._env.reset(key, params)
        stats = RunningStats.create(obs.shape) if stats is None else stats
        if stats.mean.shape != obs.shape:
            raise ValueError(
                f"NormalizeObservation: stats have shape {stats.mean.shape} but observations "
                f"{obs.shape}; pass stats of one env (pool_stats merges a batch)."
            )
        stats = stats if self.frozen else stats.update(obs)
        obs = stats.normalize(obs, self.epsilon, self.clip)
        return obs, NormalizeObservationState(env_state=env_state, stats=stats)

    @partial(jax.jit, static_argnames=("self",))
    def step(
        self,
        key: jax.Array,
        state: NormalizeObservationState,
        action: jax.Array,
        params: EnvParams | None = None,
    ) -> tuple[jax.Array, NormalizeObservationState, jax.Array, jax.Array, jax.Array, dict]:
        """Step the wrapped env, update the statistics (unless frozen) and normalise."""
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, params
        )
        stats = state.stats if self.frozen else state.stats.update(obs)
        info = {
            **info,
            "final_observation": stats.normalize(
                info["final_observation"], self.epsilon, self.clip
            ),
        }
        obs = stats.normalize(obs, self.epsilon, self.clip)
        state = NormalizeObservationState(env_state=env_state, stats=stats)
        return obs, state, reward, terminated, truncated, info


def to_gymnasium_space(space: spaces.Space) -> gymnasium.spaces.Space:
    """The Gymnasium space equivalent to a gymnax space (Discrete, Box, Dict, Tuple)."""
    if isinstance(space, spaces.Discrete):
        return gymnasium.spaces.Discrete(int(space.n))
    if isinstance(space, spaces.Box):
        dtype = np.dtype(space.dtype)
        low = np.broadcast_to(np.asarray(space.low, dtype), space.shape)
        high = np.broadcast_to(np.asarray(space.high, dtype), space.shape)
        return gymnasium.spaces.Box(low, high, tuple(space.shape), dtype)
    if isinstance(space, spaces.Dict):
        return gymnasium.spaces.Dict({k: to_gymnasium_space(s) for k, s in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return gymnasium.spaces.Tuple(tuple(to_gymnasium_space(s) for s in space.spaces))
    raise ValueError(
        f"cannot convert {type(space).__name__} to a Gymnasium space; supported: "
        "Discrete, Box, Dict, Tuple."
    )


def _check_render_mode(render_mode: str | None) -> None:
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, jax.device_get(tree))


# Compiled once per env object (static) and shared by all its adapters; params are traced.
# Each returns the advanced key(s) first, so one dispatch does the key split and the env call.
@partial(jax.jit, static_argnums=0)
def _reset_one(env: Any, key: jax.Array, params: EnvParams) -> tuple[Any, ...]:
    key, sub = jax.random.split(key)
    return (key, *env.reset(sub, params))


@partial(jax.jit, static_argnums=0)
def _step_one(
    env: Any, key: jax.Array, state: Any, action: jax.Array, params: EnvParams
) -> tuple[Any, ...]:
    key, sub = jax.random.split(key)
    return (key, *env.step(sub, state, action, params))


@partial(jax.jit, static_argnums=0)
def _render_one(env: Any, state: Any, params: EnvParams) -> jax.Array:
    return env.render(state, params)


@partial(jax.jit, static_argnums=0)
def _reset_batch(env: Any, keys: jax.Array, params: EnvParams) -> tuple[Any, ...]:  # keys [N]
    return jax.vmap(lambda key: _reset_one(env, key, params))(keys)


@partial(jax.jit, static_argnums=0)
def _step_batch(
    env: Any, keys: jax.Array, state: Any, actions: jax.Array, params: EnvParams
) -> tuple[Any, ...]:  # keys [N], actions [N, ...]
    return jax.vmap(lambda k, s, a: _step_one(env, k, s, a, params))(keys, state, actions)


@partial(jax.jit, static_argnums=0)
def _render_batch(env: Any, state: Any, params: EnvParams) -> jax.Array:  # [N, H, W, 3]
    return jax.vmap(lambda s: env.render(s, params))(state)


class GymnasiumEnv(gymnasium.Env):
    """One environment of this codebase (or gymnax) as a ``gymnasium.Env``; see ``to_gymnasium``."""

    def __init__(
        self,
        env: Any,
        params: EnvParams | None = None,
        seed: int | None = None,
        render_mode: str | None = None,
    ):
        _check_render_mode(render_mode)
        params = env.default_params if params is None else params
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
        self.render_mode = render_mode
        self.observation_space = to_gymnasium_space(env.observation_space(params))
        self.action_space = to_gymnasium_space(env.action_space(params))
        self._action_dtype = env.action_space(params).dtype
        self._name = env.name
        self._seed = seed
        self._key: jax.Array | None = None
        self._state: Any = None
        self._env, self._params = env, params

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``seed`` reseeds the JAX key (same seed -> same episode)."""
        super().reset(seed=seed)
        if seed is None and self._key is None:
            seed = self._seed if self._seed is not None else int(self.np_random.integers(2**31))
        if seed is not None:
            self._key = jax.random.key(seed)
        self._key, obs, self._state = _reset_one(self._env, self._key, self._params)
        return np.asarray(obs), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One transition; ``terminated`` and ``truncated`` are reported separately."""
        if self._state is None:
            raise ValueError(f"{self._name}: call reset() before step().")
        action = np.asarray(action, self._action_dtype)
        self._key, obs, self._state, reward, terminated, truncated, info = _step_one(
            self._env, self._key, self._state, action, self._params
        )
        obs, reward, terminated, truncated, info = _to_numpy(
            (obs, reward, terminated, truncated, info)
        )
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        """The current frame as uint8 [H, W, 3] when ``render_mode="rgb_array"``, else None."""
        if self.render_mode is None or self._state is None:
            return None
        return np.asarray(_render_one(self._env, self._state, self._params), np.uint8)


class GymnasiumVectorEnv(gymnasium.vector.VectorEnv):
    """A batch of one environment as a ``gymnasium.vector.VectorEnv`` (``to_gymnasium_vector``)."""

    def __init__(
        self,
        env: Any,
        params: EnvParams | None,
        num_envs: int,
        seed: int | None = None,
        render_mode: str | None = None,
    ):
        _check_render_mode(render_mode)
        if not (isinstance(num_envs, int) and num_envs >= 1):
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
        params = env.default_params if params is None else params
        self.metadata = {
            "autoreset_mode": AutoresetMode.SAME_STEP,
            "render_modes": ["rgb_array"],
            "render_fps": 30,
        }
        self.render_mode = render_mode
        self.num_envs = num_envs
        self.single_observation_space = to_gymnasium_space(env.observation_space(params))
        self.single_action_space = to_gymnasium_space(env.action_space(params))
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._action_dtype = env.action_space(params).dtype
        self._action_shape = (num_envs, *env.action_space(params).shape)
        self._name = env.name
        self._seed = seed
        self._keys: jax.Array | None = None
        self._state: Any = None
        self._env, self._params = env, params

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env; env i gets ``seed + i`` for an int ``seed`` (Gymnasium's rule), or
        ``seed[i]`` for a list, and then the same episodes as ``to_gymnasium`` with that seed."""
        super().reset(seed=seed if isinstance(seed, int) else None)
        if seed is None and self._keys is None:
            seed = self._seed if self._seed is not None else int(self.np_random.integers(2**31))
        if isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        if seed is not None:
            if len(seed) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds (one per env), got {len(seed)}.")
            # jax.random.key keeps an int seed's low 32 bits; do the same for the batch
            seeds = np.asarray([int(s) % 2**32 for s in seed], np.uint32)
            self._keys = jax.vmap(jax.random.key)(seeds)
        self._keys, obs, self._state = _reset_batch(self._env, self._keys, self._params)
        return np.asarray(obs), {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env with same-step auto-reset.

        A finished env returns its next episode's first observation; its last observation is
        ``infos["final_obs"][i]`` (``infos["_final_obs"][i]`` is True), and the step's info
        ``infos["final_info"]``, as Gymnasium 1.x defines for ``AutoresetMode.SAME_STEP``.
        """
        if self._state is None:
            raise ValueError(f"{self._name}: call reset() before step().")
        actions = np.asarray(actions, self._action_dtype)
        if actions.shape != self._action_shape:
            raise ValueError(
                f"{self._name}: expected actions of shape {self._action_shape} (one per env), "
                f"got {actions.shape}."
            )
        self._keys, obs, self._state, reward, terminated, truncated, info = _step_batch(
            self._env, self._keys, self._state, actions, self._params
        )
        obs, reward, terminated, truncated, info = _to_numpy(
            (obs, reward, terminated, truncated, info)
        )
        final_obs = info.pop("final_observation")
        infos: dict[str, Any] = {}
        for name, value in info.items():
            infos[name], infos[f"_{name}"] = value, np.ones(self.num_envs, np.bool_)
        done = terminated | truncated
        if done.any():
            infos["final_obs"] = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                infos["final_obs"][i] = final_obs[i]
            infos["_final_obs"] = done
            infos["final_info"] = {}
            for name, value in info.items():
                infos["final_info"][name], infos["final_info"][f"_{name}"] = value, done
            infos["_final_info"] = done
        return obs, reward.astype(np.float64), terminated, truncated, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One uint8 [H, W, 3] frame per env when ``render_mode="rgb_array"``, else None."""
        if self.render_mode is None or self._state is None:
            return None
        return tuple(np.asarray(_render_batch(self._env, self._state, self._params), np.uint8))


def to_gymnasium(
    env: Any,
    params: EnvParams | None = None,
    seed: int | None = None,
    render_mode: str | None = None,
) -> GymnasiumEnv:
    """``env`` as a ``gymnasium.Env`` (numpy in and out, jitted reset/step inside).

    ``seed`` seeds the first ``reset()`` called without a seed; ``render_mode="rgb_array"``
    makes ``render()`` return the env's frame as uint8 [H, W, 3].
    """
    return GymnasiumEnv(env, params, seed=seed, render_mode=render_mode)


def to_gymnasium_vector(
    env: Any,
    params: EnvParams | None,
    num_envs: int,
    seed: int | None = None,
    render_mode: str | None = None,
) -> GymnasiumVectorEnv:
    """``num_envs`` copies of ``env`` as a Gymnasium 1.x vector env (same-step auto-reset)."""
    return GymnasiumVectorEnv(env, params, num_envs, seed=seed, render_mode=render_mode)
