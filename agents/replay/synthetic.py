"""Synthetic experience replay (SynthER): diffusion upsampling of transitions, offline and online.

    synth, losses = fit_synthesizer(dataset, PRESETS["cpu"], key)  # dataset: Transition [N]
    synthetic = upsample(synth, 1_000_000, key)                   # Transition [1M], host memory
    moments(dataset, synthetic); dynamics_consistency(env, params, synthetic, key)

    train = make_train(SynthERConfig(), env, env_params)          # online: SAC + synthetic data
    state, metrics = jax.jit(train)(key)

A transition is modelled as one flat vector ``[s, a, r, s', terminated]``; every dimension is
z-scored except the terminal flag, which is thresholded at 0.5 when vectors become transitions
again (the reference's choice). Upsampling draws from the EMA denoiser in chunks, so the device
holds one chunk and the host the result. Online, SAC collects real data as usual; every
``retrain_every`` environment steps a fresh diffusion model is trained on the real buffer and
replaces the synthetic buffer, and each gradient step's batch takes ``synthetic_ratio`` of its
rows from it (all real until the first refill).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agents.diffusion import (
    PRESETS,
    Diffusion,
    DiffusionConfig,
    DiffusionState,
    check_fits,
    fit,
    fit_normalizer,
    make_diffusion,
)
from agents.hparams import require, static
from agents.replay import Transition
from agents.sac import SACConfig, SACState, make_sac
from envs.core import is_concrete

# --------------------------------------------------------------------------------------------
# Transitions <-> flat vectors


def check_transitions(data: Transition, what: str = "transitions") -> tuple[int, int]:
    """Raise a ValueError unless ``data`` is a non-empty, finite flat batch of continuous-action
    transitions; return (obs_dim, act_dim)."""
    require(isinstance(data, Transition), f"{what} must be an agents.replay.Transition")
    shapes = {k: tuple(np.shape(v)) for k, v in data._asdict().items()}
    n = shapes["reward"][:1]
    require(
        len(shapes["reward"]) == 1 and n[0] >= 1,
        f"{what}: reward must be [N] with N >= 1 (a flat batch), got {shapes['reward']}; "
        "reshape time-major [T, E] data to [T * E]",
    )
    obs_dim = shapes["obs"][1:]
    require(
        len(shapes["obs"]) == 2 and shapes["next_obs"] == shapes["obs"],
        f"{what}: obs and next_obs must both be [N, obs_dim], got {shapes['obs']} and "
        f"{shapes['next_obs']}",
    )
    require(
        len(shapes["action"]) == 2,
        f"{what}: action must be [N, act_dim] (continuous actions), got {shapes['action']}",
    )
    for k, shape in shapes.items():
        require(shape[:1] == n, f"{what}: {k} has {shape[:1]} rows, reward has {n}")
    for k, v in data._asdict().items():
        if is_concrete(v) and np.issubdtype(np.asarray(v).dtype, np.floating):
            bad = ~np.isfinite(np.asarray(v))
            if bad.any():
                raise ValueError(
                    f"{what}: {k} has {bad.sum()} non-finite values (NaN or inf), first at row "
                    f"{np.argwhere(bad)[0][0]}; remove those transitions"
                )
    return obs_dim[0], shapes["action"][1]


def transitions_to_vectors(data: Transition) -> jax.Array:
    """Transition [N] -> [N, 2 obs_dim + act_dim + 2] rows ``[s, a, r, s', terminated]``."""
    xp = jnp if any(isinstance(x, jax.Array) for x in data) else np
    return xp.concatenate(
        [
            data.obs,
            data.action,
            data.reward[:, None],
            data.next_obs,
            data.terminated[:, None].astype(np.float32),
        ],
        axis=1,
        dtype=np.float32,
    )


def vectors_to_transitions(x: Any, obs_dim: int, threshold: float = 0.5) -> Transition:
    """[N, D] rows ``[s, a, r, s', terminated]`` -> Transition [N]; terminal flags are
    ``x > threshold``; nothing is truncated (a generated step has no time limit)."""
    xp = jnp if isinstance(x, jax.Array) else np
    act_dim = x.shape[1] - 2 * obs_dim - 2
    require(act_dim >= 1, f"vectors of dimension {x.shape[1]} cannot hold obs_dim={obs_dim}")
    a, r = obs_dim + act_dim, obs_dim + act_dim + 1
    terminated = x[:, -1] > threshold
    return Transition(
        x[:, :obs_dim], x[:, obs_dim:a], x[:, a], x[:, r:-1], terminated, xp.zeros_like(terminated)
    )


# --------------------------------------------------------------------------------------------
# Offline: fit a synthesizer to a dataset, upsample it


class Synthesizer(NamedTuple):
    """A diffusion model of one dataset's transitions, trained, with the shapes to split them."""

    model: Diffusion
    state: DiffusionState
    obs_dim: int
    act_dim: int


def fit_synthesizer(
    data: Transition,
    config: DiffusionConfig,
    key: jax.Array,
    progress: bool = False,
) -> tuple[Synthesizer, np.ndarray]:
    """Train a diffusion model on ``data`` [N] (checked before anything compiles).

    Returns the synthesizer and the training losses [config.num_train_steps].
    """
    obs_dim, act_dim = check_transitions(data, "dataset")
    vectors = transitions_to_vectors(data)
    model = make_diffusion(config, vectors.shape[1])
    state, losses = fit(model, vectors, key, skip_dims=(vectors.shape[1] - 1,), progress=progress)
    return Synthesizer(model, state, obs_dim, act_dim), losses


def upsample(
    synth: Synthesizer, num_samples: int, key: jax.Array, chunk_size: int = 100_000
) -> Transition:
    """``num_samples`` synthetic transitions as host (numpy) arrays, drawn ``chunk_size`` at a
    time so the device only ever holds one chunk."""
    require(
        isinstance(num_samples, int | np.integer) and num_samples >= 1,
        f"num_samples={num_samples!r} must be a positive int",
    )
    require(chunk_size >= 1, f"chunk_size={chunk_size} must be >= 1")
    obs_dim, act_dim = synth.obs_dim, synth.act_dim
    check_fits(
        num_samples * 4 * (2 * obs_dim + act_dim + 2),
        f"holding {num_samples:,} transitions in host memory",
        "ask for fewer samples, or upsample in several calls and write each to disk",
        jax.devices("cpu")[0],
    )
    chunk = min(chunk_size, num_samples)
    sample = jax.jit(synth.model.sample, static_argnums=2)
    out = Transition(
        np.empty((num_samples, obs_dim), np.float32),
        np.empty((num_samples, act_dim), np.float32),
        np.empty((num_samples,), np.float32),
        np.empty((num_samples, obs_dim), np.float32),
        np.empty((num_samples,), bool),
        np.zeros((num_samples,), bool),
    )
    for i, start in enumerate(range(0, num_samples, chunk)):
        x = np.asarray(sample(synth.state, jax.random.fold_in(key, i), chunk))
        part = vectors_to_transitions(x, obs_dim)
        n = min(chunk, num_samples - start)
        for dst, src in zip(out, part):
            dst[start : start + n] = src[:n]
    return out


# --------------------------------------------------------------------------------------------
# Quality: moments and dynamics consistency


def moments(real: Transition, synthetic: Transition) -> dict[str, np.ndarray]:
    """Per-dimension mean and std of real and synthetic ``[s, a, r, s', terminated]`` vectors,
    and the synthetic-minus-real mean gap in units of the real std."""
    r = np.asarray(transitions_to_vectors(real), np.float64)
    s = np.asarray(transitions_to_vectors(synthetic), np.float64)
    out = {
        "real_mean": r.mean(0),
        "real_std": r.std(0),
        "synthetic_mean": s.mean(0),
        "synthetic_std": s.std(0),
    }
    # constant real dimensions (e.g. never-terminating tasks): gap in raw units, ratio 1 if equal
    scale = np.where(out["real_std"] > 0, out["real_std"], 1.0)
    out["mean_gap_in_std"] = (out["synthetic_mean"] - out["real_mean"]) / scale
    out["std_ratio"] = np.where(
        out["real_std"] > 0, out["synthetic_std"] / scale, 1.0 + out["synthetic_std"]
    )
    return out


def state_from_observation(env: Any, obs: jax.Array) -> Any:
    """A MuJoCo env state whose observation is ``obs`` [obs_dim] (root x = 0, cold solver).

    The locomotion observation is ``qpos[1:]`` then ``qvel``, so a state is fully determined up
    to the root x position, which no reward or observation depends on.
    """
    from envs.mujoco import MujocoState, Physics

    require(
        hasattr(env, "task"),
        f"dynamics consistency needs a MuJoCo env (envs.make('HalfCheetah', ...)), got {env}",
    )
    nq = env.task.model.nq
    qpos = jnp.concatenate([jnp.zeros(1, jnp.float32), obs[: nq - 1]])
    return MujocoState(physics=Physics.at_rest(qpos, obs[nq - 1 :]), time=jnp.int32(0))


def dynamics_consistency(
    env: Any, env_params: Any, data: Transition, key: jax.Array, obs_scale: Any = None
) -> dict[str, float]:
    """How well each (s, a) -> (r, s', terminated) in ``data`` agrees with the simulator.

    Sets the simulator to s, applies a, and compares; the same comparison for the (r, s') of
    randomly re-paired rows is the baseline of data that ignores the dynamics. Next-state errors
    are mean squared errors per dimension in units of ``obs_scale`` [obs_dim] (default: the
    std of ``data.next_obs``). Returns ``reward_mae``, ``next_obs_mse``, ``terminal_agreement``
    and the same with a ``shuffled_`` prefix.
    """
    obs_dim, _ = check_transitions(data)
    data = jax.tree.map(jnp.asarray, data)
    scale = jnp.std(data.next_obs, 0) + 1e-6 if obs_scale is None else jnp.asarray(obs_scale)
    require(scale.shape == (obs_dim,), f"obs_scale must be [{obs_dim}], got {scale.shape}")
    k_step, k_perm = jax.random.split(key)

    @jax.jit
    def simulate(data):
        states = jax.vmap(lambda o: state_from_observation(env, o))(data.obs)
        keys = jax.random.split(k_step, data.obs.shape[0])
        step = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))
        next_obs, _, reward, terminated, _ = step(keys, states, data.action, env_params)
        return next_obs, reward, terminated

    next_obs, reward, terminated = simulate(data)

    def errors(r, s2, term) -> dict[str, float]:
        return {
            "reward_mae": float(jnp.abs(r - reward).mean()),
            "next_obs_mse": float(jnp.square((s2 - next_obs) / scale).mean()),
            "terminal_agreement": float((term == terminated).mean()),
        }

    perm = jax.random.permutation(k_perm, data.obs.shape[0])
    out = errors(data.reward, data.next_obs, data.terminated)
    shuffled = errors(data.reward[perm], data.next_obs[perm], data.terminated[perm])
    return out | {f"shuffled_{k}": v for k, v in shuffled.items()}


# --------------------------------------------------------------------------------------------
# Online: SAC with a synthetic buffer refilled by a diffusion model trained on the real one


@struct.dataclass
class SynthERConfig:
    """Online SynthER: SAC at a high update-to-data ratio plus diffusion-generated batches."""

    sac: SACConfig = SACConfig(utd=20)
    diffusion: DiffusionConfig = PRESETS["cpu"]
    retrain_every: int = static(10_000)  # env steps between diffusion refits (one `update`)
    num_synthetic: int = static(100_000)  # samples generated at every refit
    sample_chunk: int = static(10_000)  # samples drawn per sampler call
    synthetic_ratio: float = static(0.5)  # fraction of each batch from the synthetic buffer

    @property
    def num_updates(self) -> int:
        return (self.sac.total_timesteps - self.sac.learning_starts) // self.retrain_every

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        self.sac.validate()
        self.diffusion.validate()
        require(
            self.retrain_every % self.sac.steps_per_update == 0,
            f"SynthERConfig.retrain_every={self.retrain_every} must be a multiple of SAC's "
            f"num_envs * num_steps = {self.sac.steps_per_update} (metrics are per SAC block)",
        )
        require(
            self.num_updates >= 1,
            f"sac.total_timesteps={self.sac.total_timesteps} leaves no room for one refit "
            f"period (retrain_every={self.retrain_every} after learning_starts); raise it",
        )
        require(
            self.sac.buffer_size >= self.sac.total_timesteps,
            f"sac.buffer_size={self.sac.buffer_size} < total_timesteps: the diffusion model "
            "trains on the buffer's first rows, which a ring buffer would overwrite",
        )
        require(
            self.num_synthetic >= 1 and self.sample_chunk >= 1,
            "num_synthetic and sample_chunk must be >= 1",
        )
        require(
            self.num_synthetic % self.sample_chunk == 0,
            f"num_synthetic={self.num_synthetic} must be a multiple of sample_chunk="
            f"{self.sample_chunk}",
        )
        require(
            0.0 <= self.synthetic_ratio < 1.0,
            f"synthetic_ratio={self.synthetic_ratio} must be in [0, 1): some real data per batch",
        )


class SynthERState(NamedTuple):
    """SAC's state plus the synthetic buffer (regenerated whole at every refit)."""

    sac: SACState
    synthetic: Transition  # [num_synthetic]
    has_synthetic: jax.Array  # bool []: False until the first refit
    key: jax.Array


class SynthER(NamedTuple):
    policy: Any  # SAC's policy (act with policy.act)
    init: Any  # key -> SynthERState
    update: Any  # (state, refit=True) -> (state, metrics): retrain_every env steps, then refill
    train: Any  # key -> (state, metrics [num_updates])
    refill: Any  # (state, key) -> state: a fresh diffusion model's samples in the buffer
    batch: Any  # (state, key) -> Transition [batch_size]: real rows, then synthetic ones


def make_synther(config: SynthERConfig, env: Any, env_params: Any) -> SynthER:
    """Build online SynthER's pure functions on top of ``agents.sac``'s exposed pieces."""
    config.validate()
    sac_cfg = config.sac
    sac = make_sac(sac_cfg, env, env_params)
    obs_dim = int(env.observation_space(env_params).shape[0])
    act_dim = int(sac.policy.low.shape[0])
    dim = 2 * obs_dim + act_dim + 2
    model = make_diffusion(config.diffusion, dim)
    batch = sac_cfg.batch_size
    num_syn = round(config.synthetic_ratio * batch)
    num_chunks = config.num_synthetic // config.sample_chunk

    def real_data(sac_state: SACState) -> tuple[Transition, jax.Array]:
        buf = sac_state.buffer
        data = jax.tree.map(lambda x: x[0], buf.experience)  # [capacity, ...]
        size = jnp.where(buf.is_full, sac_cfg.buffer_size, buf.current_index)
        return data, size

    def refill(state: SynthERState, key: jax.Array) -> SynthERState:
        k_init, k_train, k_sample = jax.random.split(key, 3)
        data, size = real_data(state.sac)
        vectors = transitions_to_vectors(data)
        diff = model.init(k_init, fit_normalizer(vectors, skip_dims=(dim - 1,), size=size))
        diff, _ = model.train(diff, vectors, k_train, size=size)
        keys = jax.random.split(k_sample, num_chunks)
        samples = jax.lax.map(lambda k: model.sample(diff, k, config.sample_chunk), keys)
        synthetic = vectors_to_transitions(samples.reshape(-1, dim), obs_dim)
        return state._replace(synthetic=synthetic, has_synthetic=jnp.array(True))

    def init(key: jax.Array) -> SynthERState:
        key, k_sac = jax.random.split(key)
        n = config.num_synthetic
        empty = Transition(
            jnp.zeros((n, obs_dim)),
            jnp.zeros((n, act_dim)),
            jnp.zeros((n,)),
            jnp.zeros((n, obs_dim)),
            jnp.zeros((n,), bool),
            jnp.zeros((n,), bool),
        )
        return SynthERState(sac.init(k_sac), empty, jnp.array(False), key)

    def mixed_batch(state: SynthERState, key: jax.Array) -> Transition:
        k_real, k_syn = jax.random.split(key)
        real = sac.sample(state.sac.buffer, k_real)
        idx = jax.random.randint(k_syn, (num_syn,), 0, config.num_synthetic)
        syn = jax.tree.map(lambda x: x[idx], state.synthetic)
        tail = jax.tree.map(
            lambda s, r: jnp.where(state.has_synthetic, s, r[batch - num_syn :]), syn, real
        )
        return jax.tree.map(lambda r, t: jnp.concatenate([r[: batch - num_syn], t]), real, tail)

    def env_step(state: SynthERState, _):
        sac_state, _, info = sac.collect(state.sac)
        key, k_learn = jax.random.split(sac_state.key)

        def gradient_step(learner, k):
            k_batch, k_learn = jax.random.split(k)
            batch = mixed_batch(state._replace(sac=sac_state), k_batch)
            return sac.learn(learner, batch, k_learn)

        keys = jax.random.split(k_learn, sac_cfg.utd * sac_cfg.num_envs)
        learner, stats = jax.lax.scan(gradient_step, sac_state.learner, keys)
        episodes = {k: v for k, v in info.items() if k.startswith("returned_episode")}
        sac_state = sac_state._replace(learner=learner, key=key)
        return state._replace(sac=sac_state), (stats, episodes)

    def update(state: SynthERState, refit: bool | jax.Array = True) -> tuple[SynthERState, dict]:
        steps = config.retrain_every // sac_cfg.num_envs
        state, (stats, ep) = jax.lax.scan(env_step, state, None, steps)
        metrics = {k: v.mean() for k, v in stats.items()}
        finished = ep["returned_episode"]
        num_finished = finished.sum()
        metrics["episodes"] = num_finished
        for name, field in (("return", "returns"), ("length", "lengths")):
            total = (ep[f"returned_episode_{field}"] * finished).sum()
            metrics[name] = jnp.where(
                num_finished > 0, total / jnp.maximum(num_finished, 1), jnp.nan
            )
        key, k_refill = jax.random.split(state.key)
        state = state._replace(key=key)
        state = jax.lax.cond(refit, refill, lambda s, _: s, state, k_refill)
        return state, metrics

    def train(key: jax.Array) -> tuple[SynthERState, dict]:
        # The last period's refit would feed no gradient step: skip it. The predicate is the
        # (unbatched) update index, so under vmap this stays a real branch, not a select.
        last = config.num_updates - 1
        return jax.lax.scan(lambda s, i: update(s, i < last), init(key), jnp.arange(last + 1))

    return SynthER(sac.policy, init, update, train, refill, mixed_batch)


def make_train(config: SynthERConfig, env: Any, env_params: Any):
    """``train(key) -> (SynthERState, metrics)``: a whole online SynthER run as one function."""
    return make_synther(config, env, env_params).train


__all__ = [
    "SynthER",
    "SynthERConfig",
    "SynthERState",
    "Synthesizer",
    "check_transitions",
    "dynamics_consistency",
    "fit_synthesizer",
    "make_synther",
    "make_train",
    "moments",
    "state_from_observation",
    "transitions_to_vectors",
    "upsample",
    "vectors_to_transitions",
]
