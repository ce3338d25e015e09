"""Offline datasets in Minari format, flat ``Transition`` arrays, and D4RL normalised scores.

    path = save_dataset(transitions, "skill-agents/halfcheetah-medium-v0", env_name="HalfCheetah",
                        env_kwargs={}, ref_min_score=-290.0, ref_max_score=10500.0)
    data, meta = load_dataset("skill-agents/halfcheetah-medium-v0", env=env, env_params=params)
    normalized_score("halfcheetah", returns)                          # D4RL's reference returns
    normalized_score("halfcheetah", returns, meta["ref_min_score"], meta["ref_max_score"])

A dataset lives in ``<root>/<dataset_id>/data`` (Minari's layout; ``root`` defaults to
``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``) and stores whole episodes: observations
``[T + 1]`` (the last one is the observation the final action led to), actions, rewards,
terminations and truncations ``[T]``. ``load_dataset`` reads any local Minari dataset with flat
Box observations, so a researcher's own datasets load into the same arrays. Everything a user
can get wrong (sizes that do not match the env, NaN/inf, missing fields, an empty dataset, a
corrupt file) raises ``DatasetError`` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agents.replay import Transition

__all__ = [
    "D4RL_REF_SCORES",
    "DatasetError",
    "collect",
    "dataset_complete",
    "dataset_path",
    "dataset_root",
    "episode_returns",
    "episode_subset",
    "load_dataset",
    "normalized_score",
    "save_dataset",
]

# D4RL's reference returns (d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE, the -v2 locomotion
# tasks): (random policy, expert policy) average undiscounted return over 1000-step episodes.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}

_METADATA = "metadata.json"
_EPISODE_FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")
# Minari's own metadata keys that save_dataset passes through Minari's API (typed there).
_MINARI_KEYS = ("algorithm_name", "author", "author_email", "code_permalink", "description")


class DatasetError(ValueError):
    """A dataset cannot be written or read as asked; the message names the file and field."""


def dataset_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$MINARI_DATASETS_PATH``, else Minari's default ``~/.minari/datasets``."""
    if root is None:
        root = os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets"
    return Path(root).expanduser().absolute()  # Minari resolves relative roots its own way


def dataset_path(dataset_id: str, root: str | Path | None = None) -> Path:
    """The folder of ``dataset_id`` under ``dataset_root(root)``."""
    return dataset_root(root) / dataset_id


def normalized_score(
    task: str | None,
    returns: Any,
    ref_min: float | None = None,
    ref_max: float | None = None,
) -> Any:
    """D4RL's normalised score ``100 * (R - random) / (expert - random)``.

    ``task`` is a locomotion name (``halfcheetah``, ``HalfCheetah``, ``hopper-medium-v2`` or a
    dataset id like ``skill-agents/walker2d-expert-v0``), or None when ``ref_min`` and
    ``ref_max`` are given; they override the published D4RL reference returns (e.g. the ones
    measured for a dataset). ``returns`` is a number, a numpy array (float64 result, a float for
    a scalar) or a jax array (jax result of its dtype, so it also works inside ``jax.jit``).
    """
    if ref_min is None or ref_max is None:
        name = str(task).rsplit("/", 1)[-1].split("-", 1)[0].lower()
        if name not in D4RL_REF_SCORES:
            raise ValueError(
                f"no D4RL reference returns for task {task!r}; known: {sorted(D4RL_REF_SCORES)}. "
                "Pass ref_min and ref_max (e.g. from the dataset's metadata) for other tasks."
            )
        d4rl_min, d4rl_max = D4RL_REF_SCORES[name]
        ref_min = d4rl_min if ref_min is None else ref_min
        ref_max = d4rl_max if ref_max is None else ref_max
    if not ref_max > ref_min:
        raise ValueError(f"ref_max={ref_max} must exceed ref_min={ref_min}")
    if isinstance(returns, jax.Array):  # traced values too
        return 100.0 * (returns - ref_min) / (ref_max - ref_min)
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)
    return float(scores) if scores.ndim == 0 else scores


def episode_returns(transitions: Transition) -> np.ndarray:
    """Undiscounted return of every complete episode in flat ``[N]`` transitions (as loaded).

    An episode ends where ``terminated | truncated``; steps after the last end are ignored.
    """
    reward = np.asarray(transitions.reward, dtype=np.float64)
    ends = np.flatnonzero(np.asarray(transitions.terminated) | np.asarray(transitions.truncated))
    if ends.size == 0:
        return np.zeros(0)
    sums = np.add.reduceat(reward[: ends[-1] + 1], np.concatenate([[0], ends[:-1] + 1]))
    return sums


def episode_subset(data: Transition, fraction: float, seed: int) -> Transition:
    """Whole episodes of flat ``[N]`` transitions, drawn in random order (numpy ``seed``) until
    they hold ``fraction`` of the transitions, kept in their original order."""
    ends = np.flatnonzero(np.asarray(data.terminated) | np.asarray(data.truncated))
    starts = np.concatenate([[0], ends[:-1] + 1])
    order = np.random.default_rng(seed).permutation(len(ends))
    lengths = (ends - starts + 1)[order]
    keep = order[: int(np.searchsorted(np.cumsum(lengths), fraction * data.reward.shape[0])) + 1]
    idx = np.concatenate([np.arange(starts[i], ends[i] + 1) for i in np.sort(keep)])
    return jax.tree.map(lambda x: np.asarray(x)[idx], data)


def collect(
    key: jax.Array,
    env: Any,
    env_params: Any,
    act: Callable[[jax.Array, jax.Array], jax.Array],
    num_steps: int,
    num_envs: int,
    info_keys: Sequence[str] = (),
) -> Transition | tuple[Transition, dict[str, jax.Array]]:
    """Roll ``act(obs [E, D], key) -> action [E, ...]`` in ``num_envs`` auto-resetting envs.

    Returns time-major ``[num_steps, num_envs]`` transitions (what ``save_dataset`` stores);
    ``next_obs`` is the pre-reset observation. With ``info_keys`` (e.g. ``("cost",)``), also
    those step infos {key: [num_steps, num_envs]}. Jittable (``num_steps``/``num_envs`` static).
    """
    k_reset, k_steps = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(k_reset, num_envs), env_params
    )

    def step(carry, key):
        obs, state = carry
        k_act, k_env = jax.random.split(key)
        action = act(obs, k_act)
        next_obs, state, reward, terminated, truncated, info = jax.vmap(
            env.step, in_axes=(0, 0, 0, None)
        )(jax.random.split(k_env, num_envs), state, action, env_params)
        final_obs = info["final_observation"]
        transition = Transition(obs, action, reward, final_obs, terminated, truncated)
        return (next_obs, state), (transition, {k: info[k] for k in info_keys})

    _, (transitions, infos) = jax.lax.scan(step, (obs, state), jax.random.split(k_steps, num_steps))
    return (transitions, infos) if info_keys else transitions


# ---------------------------------------------------------------------------------------------
# Writing


def save_dataset(
    transitions: Transition,
    dataset_id: str,
    *,
    env_name: str,
    env_kwargs: dict,
    ref_min_score: float,
    ref_max_score: float,
    root: str | Path | None = None,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Store time-major ``[T]`` or ``[T, E]`` transitions as the Minari dataset ``dataset_id``.

    Each env's column is cut into episodes at ``terminated | truncated``; a trailing unfinished
    episode is stored as truncated. ``env_name``/``env_kwargs`` (``envs.make`` arguments) give
    the spaces and are recorded with the measured reference returns and ``metadata``. Minari
    stores one observation sequence per episode, so within an episode ``next_obs[t]`` must equal
    ``obs[t + 1]`` (true for env rollouts, up to float rounding); loading gives back exactly
    these transitions, column after column, with ``next_obs[t] = obs[t + 1]`` inside episodes.
    Returns the dataset's folder.
    """
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id

    import envs

    where = f"save_dataset({dataset_id!r})"
    try:
        parse_dataset_id(dataset_id)
    except ValueError as err:
        raise DatasetError(
            f"{where}: malformed dataset id; Minari ids read (namespace/)name-v<version>, e.g. "
            "skill-agents/halfcheetah-medium-v0"
        ) from err
    data = _as_numpy(transitions, where)
    if data.reward.ndim == 1:
        data = Transition(*(x[:, None] for x in data))  # [T] -> [T, 1]
    if data.reward.ndim != 2:
        raise DatasetError(f"{where}: reward has shape {data.reward.shape}; expected [T] or [T, E]")
    _check_arrays(data, where, batch_dims=2)
    env, env_params = envs.make(env_name, **env_kwargs)
    obs_space = _to_gymnasium_space(env.observation_space(env_params))
    act_space = _to_gymnasium_space(env.action_space(env_params))
    _check_sizes(data, obs_space, act_space, where, f"environment {env_name!r}", batch_dims=2)
    for name, value in (("ref_min_score", ref_min_score), ("ref_max_score", ref_max_score)):
        if not np.isfinite(value):
            raise DatasetError(f"{where}: {name}={value} is not a finite number")
    episodes = _split_episodes(data, where)

    path = dataset_path(dataset_id, root)
    if path.exists() and not overwrite and dataset_complete(dataset_id, root):
        raise DatasetError(
            f"{where}: {path} already exists; pass overwrite=True, delete it, or bump the "
            "version suffix (-v1, -v2, ...)"
        )
    extra = dict(metadata or {})
    minari_kwargs = {k: extra.pop(k) for k in _MINARI_KEYS if k in extra}
    for key in ("author", "author_email"):
        if isinstance(minari_kwargs.get(key), list | tuple):
            minari_kwargs[key] = set(minari_kwargs[key])
    extra.update(
        env_name=env_name,
        env_kwargs=env_kwargs,
        ref_min_score=float(ref_min_score),
        ref_max_score=float(ref_max_score),
        num_envs=int(data.reward.shape[1]),
    )
    try:
        json.dumps(extra)
    except TypeError as err:
        raise DatasetError(
            f"{where}: metadata must be JSON-serialisable ({err}); convert arrays with .tolist()"
        ) from err
    # written into a staging root beside the real one and renamed into place when complete:
    # a kill at any moment leaves either the whole dataset or none
    staging = dataset_root(root) / f".partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with _minari_root(staging), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            dataset = minari.create_dataset_from_buffers(
                dataset_id,
                episodes,
                observation_space=obs_space,
                action_space=act_space,
                data_format="hdf5",
                **minari_kwargs,
            )
        dataset.storage.update_metadata(extra)
        path.parent.mkdir(parents=True, exist_ok=True)
        for made in staging.rglob("namespace_metadata.json"):  # Minari's namespace records
            kept = dataset_root(root) / made.relative_to(staging)
            if not kept.exists():
                shutil.copyfile(made, kept)
        if path.exists():
            shutil.rmtree(path)  # overwrite=True, or a half-written one from an older version
        os.replace(staging / dataset_id, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def dataset_complete(dataset_id: str, root: str | Path | None = None) -> bool:
    """Whether ``dataset_id`` is stored whole: its metadata, written last, records the reference
    scores (a dataset whose writing was killed has none and is written again)."""
    meta_file = dataset_path(dataset_id, root) / "data" / _METADATA
    try:
        return "ref_max_score" in json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _minari_root(root: Path) -> Iterator[None]:
    """Point Minari's dataset root (``MINARI_DATASETS_PATH``) at ``root`` for the block."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _split_episodes(data: Transition, where: str) -> list:
    """[T, E] transitions -> Minari episode buffers, env column after column."""
    from minari.data_collector import EpisodeBuffer

    done = data.terminated | data.truncated
    # Inside an episode the next observation is the following step's observation (up to float
    # rounding: a jitted env may compute the two copies in different fusions, 1 ulp apart).
    close = np.isclose(data.next_obs[:-1], data.obs[1:], rtol=1e-4, atol=1e-5)
    same = np.all(close, axis=tuple(range(2, data.obs.ndim)))
    broken = ~done[:-1] & ~same
    if broken.any():
        t, e = np.argwhere(broken)[0]
        raise DatasetError(
            f"{where}: next_obs[{t}, {e}] differs from obs[{t + 1}, {e}] although step {t} "
            "ends no episode; pass time-major rollouts ([T] or [T, E]) with terminated/truncated "
            "set at every episode end"
        )
    episodes = []
    num_steps, num_envs = data.reward.shape
    for e in range(num_envs):
        ends = list(np.flatnonzero(done[:, e]))
        if not ends or ends[-1] != num_steps - 1:
            ends.append(num_steps - 1)  # trailing unfinished episode: stored as truncated
        start = 0
        for end in ends:
            steps = slice(start, end + 1)
            truncated = data.truncated[steps, e].copy()
            truncated[-1] |= not data.terminated[end, e]
            episodes.append(
                EpisodeBuffer(
                    observations=np.concatenate([data.obs[steps, e], data.next_obs[end, e][None]]),
                    actions=data.action[steps, e],
                    rewards=data.reward[steps, e],
                    terminations=data.terminated[steps, e],
                    truncations=truncated,
                )
            )
            start = end + 1
    return episodes


# ---------------------------------------------------------------------------------------------
# Reading


def load_dataset(
    dataset_id: str,
    root: str | Path | None = None,
    *,
    env: Any = None,
    env_params: Any = None,
) -> tuple[Transition, dict]:
    """Load a local Minari dataset as flat ``[N]`` transitions (episode after episode).

    ``next_obs`` comes from each episode's observation sequence; ``terminated``/``truncated``
    are Minari's flags, with the last step of an episode marked truncated where the file marks
    neither (so episode ends survive flattening). The metadata has ``env_name``, ``env_kwargs``,
    ``ref_min_score`` and ``ref_max_score`` (None where the dataset does not record them), the
    dataset's other metadata, and ``path``. With ``env`` (and ``env_params``) the observation and
    action sizes are checked against the env's spaces.
    """
    from minari.dataset.minari_dataset import MinariDataset

    path = dataset_path(dataset_id, root)
    data_dir = path / "data"
    meta_file = data_dir / _METADATA
    if not meta_file.exists():
        known = _local_ids(dataset_root(root))
        raise DatasetError(
            f"no Minari dataset {dataset_id!r} at {path} (missing {meta_file}); create it with "
            f"save_dataset or experiments.make_datasets. Datasets in that root: {known or 'none'}"
        )
    raw = _read_metadata(meta_file)
    data_file = data_dir / ("main_data.hdf5" if raw.get("data_format") == "hdf5" else "")
    try:
        dataset = MinariDataset(data_dir)
        episodes = list(dataset.storage.get_episodes(range(dataset.total_episodes)))
    except DatasetError:
        raise
    except KeyError as err:
        raise DatasetError(
            f"{data_file}: an episode lacks a required field ({err}); every episode needs "
            f"{', '.join(_EPISODE_FIELDS)}. Re-create the dataset."
        ) from err
    except Exception as err:
        raise DatasetError(
            f"{data_file}: cannot be read as a Minari dataset ({type(err).__name__}: {err}); "
            "the file is corrupt or incomplete: re-create the dataset."
        ) from err
    if not episodes:
        raise DatasetError(f"{meta_file}: the dataset {dataset_id!r} has no episodes (empty)")
    obs_space, act_space = dataset.observation_space, dataset.action_space
    data = _flatten(episodes, data_file)
    _check_arrays(data, str(data_file), batch_dims=1)
    _check_sizes(data, obs_space, act_space, str(data_file), "the dataset's spaces", batch_dims=1)
    if env is not None:
        env_params = env.default_params if env_params is None else env_params
        _check_sizes(
            data,
            _to_gymnasium_space(env.observation_space(env_params)),
            _to_gymnasium_space(env.action_space(env_params)),
            str(data_file),
            f"environment {getattr(env, 'name', type(env).__name__)}",
            batch_dims=1,
        )
    meta = dataset.storage.metadata
    for key in ("env_name", "env_kwargs", "ref_min_score", "ref_max_score"):
        meta.setdefault(key, None)
    meta["path"] = str(path)
    return Transition(*(jnp.asarray(x) for x in data)), meta


def _read_metadata(meta_file: Path) -> dict:
    try:
        raw = json.loads(meta_file.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{meta_file}: corrupt metadata ({err}); re-create the dataset") from err
    if not isinstance(raw, dict):
        raise DatasetError(f"{meta_file}: corrupt metadata (not a JSON object); re-create it")
    required = ["data_format", "dataset_id", "minari_version", "total_episodes", "total_steps"]
    if "env_spec" not in raw:
        required += ["observation_space", "action_space"]
    missing = [k for k in required if k not in raw]
    if missing:
        raise DatasetError(
            f"{meta_file}: missing field(s) {missing}; a Minari dataset records them all. "
            "Re-create the dataset with save_dataset or minari.create_dataset_from_buffers."
        )
    if raw["total_episodes"] == 0 or raw["total_steps"] == 0:
        raise DatasetError(f"{meta_file}: the dataset is empty (total_steps=0); nothing to load")
    return raw


def _flatten(episodes: list[dict], data_file: Path) -> Transition:
    """Minari episode dicts -> flat transitions (numpy)."""
    parts: dict[str, list] = {k: [] for k in Transition._fields}
    for ep in episodes:
        i = ep.get("id")
        for key in _EPISODE_FIELDS:
            if not isinstance(ep.get(key), np.ndarray):
                raise DatasetError(
                    f"{data_file}: episode {i} field {key!r} is missing or not a flat array "
                    f"({type(ep.get(key)).__name__}); only flat Box observations and actions load"
                )
        obs, n = ep["observations"], len(ep["actions"])
        lengths = {k: len(ep[k]) for k in ("rewards", "terminations", "truncations")}
        if len(obs) != n + 1 or any(v != n for v in lengths.values()):
            raise DatasetError(
                f"{data_file}: episode {i} has {len(obs)} observations, {n} actions and "
                f"{lengths}; Minari episodes store T + 1 observations and T of everything else"
            )
        if n == 0:
            continue
        terminated = ep["terminations"].astype(bool)
        truncated = ep["truncations"].astype(bool)
        truncated[-1] |= not terminated[-1]
        parts["obs"].append(obs[:-1])
        parts["next_obs"].append(obs[1:])
        parts["action"].append(ep["actions"])
        parts["reward"].append(ep["rewards"])
        parts["terminated"].append(terminated)
        parts["truncated"].append(truncated)
    if not parts["reward"]:
        raise DatasetError(f"{data_file}: every episode is empty (0 steps); nothing to load")
    out = {k: np.concatenate(v) for k, v in parts.items()}
    for k in ("obs", "next_obs", "reward"):
        out[k] = out[k].astype(np.float32)
    if np.issubdtype(out["action"].dtype, np.floating):
        out["action"] = out["action"].astype(np.float32)
    return Transition(**out)


def _local_ids(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(str(p.parent.parent.relative_to(root)) for p in root.rglob(f"data/{_METADATA}"))


# ---------------------------------------------------------------------------------------------
# Checks shared by writing and reading


def _as_numpy(transitions: Any, where: str) -> Transition:
    if not isinstance(transitions, Transition):
        missing = [f for f in Transition._fields if not hasattr(transitions, f)]
        if missing:
            raise DatasetError(
                f"{where}: transitions lack field(s) {missing}; pass agents.replay.Transition"
            )
    fields = {}
    for f in Transition._fields:
        value = getattr(transitions, f)
        if value is None:
            raise DatasetError(f"{where}: field {f!r} is None; every Transition field is needed")
        fields[f] = np.asarray(value)
    fields["terminated"] = fields["terminated"].astype(bool)
    fields["truncated"] = fields["truncated"].astype(bool)
    return Transition(**fields)


def _check_arrays(data: Transition, where: str, batch_dims: int) -> None:
    """Non-empty, consistent leading shapes, finite numbers."""
    lead = data.reward.shape
    if data.reward.size == 0:
        raise DatasetError(f"{where}: the dataset is empty (reward has shape {lead})")
    for f, x in zip(Transition._fields, data):
        if x.shape[:batch_dims] != lead:
            raise DatasetError(
                f"{where}: field {f!r} has shape {x.shape} but reward has {lead}; every field "
                "needs the same leading (time[, env]) dimensions"
            )
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x.reshape(x.shape[:batch_dims] + (-1,))))[0]
            index = tuple(int(i) for i in bad[:-1])
            raise DatasetError(
                f"{where}: field {f!r} holds NaN or inf (first at index {index}); "
                "drop or fix those transitions before storing/training"
            )


def _check_sizes(
    data: Transition, obs_space: Any, act_space: Any, where: str, against: str, batch_dims: int
) -> None:
    """Observation and action sizes of ``data`` fit the (gymnasium) spaces of ``against``."""
    from gymnasium import spaces as gym_spaces

    if not isinstance(obs_space, gym_spaces.Box):
        raise DatasetError(
            f"{where}: observations of {against} are {type(obs_space).__name__}; "
            "only flat Box observation spaces load into Transition arrays"
        )
    for f in ("obs", "next_obs"):
        shape = getattr(data, f).shape[batch_dims:]
        if shape != obs_space.shape:
            raise DatasetError(
                f"{where}: field {f!r} has per-step shape {shape}, but {against} observes "
                f"{obs_space.shape}; use the dataset made for this env (or the env it was made for)"
            )
    shape = data.action.shape[batch_dims:]
    if isinstance(act_space, gym_spaces.Discrete):
        ok = shape == () and np.issubdtype(data.action.dtype, np.integer)
        expected = "integer scalars"
    else:
        ok = shape == act_space.shape
        expected = f"shape {act_space.shape}"
    if not ok:
        raise DatasetError(
            f"{where}: field 'action' has per-step shape {shape} ({data.action.dtype}), but "
            f"{against} takes actions of {expected}; use the dataset made for this env"
        )


def _to_gymnasium_space(space: Any) -> Any:
    """A gymnax / gymnasium space as the equivalent gymnasium space (what Minari serialises)."""
    from gymnasium import spaces as gym_spaces
    from gymnax.environments import spaces as gx_spaces

    if isinstance(space, gym_spaces.Space):
        return space
    if isinstance(space, gx_spaces.Discrete):
        return gym_spaces.Discrete(int(space.n))
    if isinstance(space, gx_spaces.Box):
        shape = tuple(space.shape)
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape)
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape)
        return gym_spaces.Box(low, high, shape, np.float32)
    raise DatasetError(
        f"unsupported space {type(space).__name__}; datasets hold Box observations and Box or "
        "Discrete actions"
    )
