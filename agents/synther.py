"""Synthetic experience replay (SynthER): a diffusion model of transitions, offline and online.

    synth, losses = fit_synthesizer(dataset, PRESETS["cpu"], key)  # dataset: Transition [N]
    synthetic = upsample(synth, 1_000_000, key)                   # Transition [1M], host memory
    quality(env, params, dataset, synthetic, key)   # moments, dynamics consistency

    synther = make_synther(SynthERConfig(), env, env_params)       # online: an agents.core.Agent
    state, metrics = jax.jit(synther.train)(key)

A transition is modelled as one flat vector ``[s, a, r, s', terminated]``
(``agents.replay.synthetic``); every dimension is z-scored except the terminal flag, which is
thresholded at 0.5 when vectors become transitions again (the reference's choice). Upsampling
draws from the EMA denoiser in chunks, so the device holds one chunk and the host the result.
Online SynthER is SAC (``agents.sac.make_sac``) with a batch hook: every ``retrain_every``
environment steps (one ``update``) a fresh diffusion model is trained on the real buffer and
replaces the synthetic buffer (kept in ``SACState.aux``), and each gradient step's batch takes
``synthetic_ratio`` of its rows from it (all real until the first refit).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agents.core import Agent
from agents.diffusion import (
    PRESETS,
    Diffusion,
    DiffusionConfig,
    DiffusionState,
    fit,
    make_diffusion,
)
from agents.hparams import check_fits, require, static
from agents.replay import Transition
from agents.replay.synthetic import (
    check_transitions,
    transitions_to_vectors,
    vectors_to_transitions,
)
from agents.sac import SACConfig, SACState, make_sac, replay_contents, replay_sample
from envs.wrappers import Normalizer

__all__ = [
    "SynthERConfig",
    "Synthesizer",
    "SyntheticBuffer",
    "dynamics_consistency",
    "fit_synthesizer",
    "make_synther",
    "mixed_batch",
    "moments",
    "quality",
    "upsample",
]

# --------------------------------------------------------------------------------------------
# Offline: fit a synthesizer to a dataset, upsample it


class Synthesizer(NamedTuple):
    """A diffusion model of one dataset's transitions, trained, with the shapes to split them
    and the dataset's action range ([act_dim] min and max) that generated actions are kept in."""

    model: Diffusion
    state: DiffusionState
    obs_dim: int
    act_dim: int
    action_range: tuple[np.ndarray, np.ndarray] | None = None


def fit_synthesizer(
    data: Transition,
    config: DiffusionConfig,
    key: jax.Array,
    progress: bool = False,
) -> tuple[Synthesizer, np.ndarray]:
    """Train a diffusion model on ``data`` [N] (checked before anything compiles).

    Returns the synthesizer and the training losses [config.total_steps].
    """
    obs_dim, act_dim = check_transitions(data, "dataset")
    vectors = transitions_to_vectors(data)
    model = make_diffusion(config, vectors.shape[1])
    state, losses = fit(model, vectors, key, skip_dims=(vectors.shape[1] - 1,), progress=progress)
    action = np.asarray(data.action, np.float32)  # the dtype of generated transitions
    action_range = (action.min(axis=0), action.max(axis=0))
    return Synthesizer(model, state, obs_dim, act_dim, action_range), losses


def upsample(
    synth: Synthesizer,
    num_samples: int,
    key: jax.Array,
    chunk_size: int = 100_000,
    clip_actions: bool = True,
) -> Transition:
    """``num_samples`` synthetic transitions as host (numpy) arrays, drawn ``chunk_size`` at a
    time so the device only ever holds one chunk.

    With ``clip_actions`` generated actions are clipped to ``synth.action_range`` (the fitted
    data's), where the env would clip them and where tanh-squashed policies can score them.
    The reference keeps them unclipped (its learners' Gaussian and MSE losses accept them).
    """
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
        if clip_actions and synth.action_range is not None:
            part = part._replace(action=np.clip(part.action, *synth.action_range))
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


@functools.partial(jax.jit, static_argnums=0)
def _simulate(env: Any, env_params: Any, obs: jax.Array, action: jax.Array, key: jax.Array):
    """The simulator's (next_obs, reward, terminated) [N] for each (obs, action) [N]."""
    states = jax.vmap(env.state_from_observation)(obs)
    step = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))
    next_obs, _, reward, terminated, _ = step(
        jax.random.split(key, obs.shape[0]), states, action, env_params
    )
    return next_obs, reward, terminated


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
    require(
        hasattr(env, "state_from_observation"),
        f"dynamics consistency needs a MuJoCo env (envs.make('HalfCheetah', ...)), got {env}",
    )
    obs_dim, _ = check_transitions(data)
    data = jax.tree.map(jnp.asarray, data)
    scale = jnp.std(data.next_obs, 0) + 1e-6 if obs_scale is None else jnp.asarray(obs_scale)
    require(scale.shape == (obs_dim,), f"obs_scale must be [{obs_dim}], got {scale.shape}")
    k_step, k_perm = jax.random.split(key)
    next_obs, reward, terminated = _simulate(env, env_params, data.obs, data.action, k_step)

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


def quality(
    env: Any,
    env_params: Any,
    real: Transition,
    synthetic: Transition,
    key: jax.Array,
    num_samples: int = 20_000,
) -> dict[str, Any]:
    """Synthetic against real transitions: per part of ``[s, a, r, s', done]`` the largest
    mean gap (in real stds) and the range of std ratios, the terminal rates, the per-dimension
    ``moments``, and ``dynamics_consistency`` of up to ``num_samples`` rows of each (next-state
    errors in units of the real next-state std)."""
    m = moments(real, synthetic)
    obs_dim, act_dim = check_transitions(real, "real data")
    scale = np.asarray(real.next_obs).std(0) + 1e-6
    head = lambda data: jax.tree.map(lambda x: x[: min(num_samples, data.reward.shape[0])], data)
    consistency = lambda data: dynamics_consistency(env, env_params, head(data), key, scale)
    bounds = np.cumsum([0, obs_dim, act_dim, 1, obs_dim])
    parts = {
        part: {
            "max_abs_mean_gap_in_std": float(np.abs(m["mean_gap_in_std"][lo:hi]).max()),
            "std_ratio_min": float(m["std_ratio"][lo:hi].min()),
            "std_ratio_max": float(m["std_ratio"][lo:hi].max()),
        }
        for part, lo, hi in zip(("obs", "action", "reward", "next_obs"), bounds[:-1], bounds[1:])
    }
    return {
        "moments": parts,
        "terminal_rate": {
            "real": float(np.asarray(real.terminated).mean()),
            "synthetic": float(np.asarray(synthetic.terminated).mean()),
        },
        "consistency_synthetic": consistency(synthetic),
        "consistency_real": consistency(real),
        "per_dimension": {k: v.tolist() for k, v in m.items()},
    }


# --------------------------------------------------------------------------------------------
# Online: SAC whose batches mix real and synthetic transitions, refitted every update


@struct.dataclass
class SynthERConfig:
    """Online SynthER: SAC at a high update-to-data ratio plus diffusion-generated batches.

    One ``update`` is ``retrain_every`` env steps of SAC (its ``num_steps`` is set to
    ``retrain_every // sac.num_envs``), then a refit of the synthetic buffer.
    """

    sac: SACConfig = SACConfig(utd=20)
    diffusion: DiffusionConfig = PRESETS["cpu"]
    retrain_every: int = static(10_000)  # env steps between diffusion refits (one `update`)
    num_synthetic: int = static(100_000)  # samples generated at every refit
    sample_chunk: int = static(10_000)  # samples drawn per sampler call
    synthetic_ratio: float = static(0.5)  # fraction of each batch from the synthetic buffer
    # generated actions clipped to the env's action space, as ``upsample`` does by default (the
    # reference keeps them unclipped: False)
    clip_actions: bool = static(True)

    @property
    def sac_config(self) -> SACConfig:
        """The SAC settings with one update per refit period."""
        return self.sac.replace(num_steps=self.retrain_every // self.sac.num_envs)

    @property
    def num_updates(self) -> int:
        return (self.sac.total_steps - self.sac.learning_starts) // self.retrain_every

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        require(
            self.retrain_every >= 1 and self.retrain_every % self.sac.num_envs == 0,
            f"SynthERConfig.retrain_every={self.retrain_every} must be a positive multiple of "
            f"sac.num_envs={self.sac.num_envs} (env steps are taken in all envs at once)",
        )
        require(
            self.num_updates >= 1,
            f"sac.total_steps={self.sac.total_steps} leaves no room for one refit period "
            f"(retrain_every={self.retrain_every} after learning_starts); raise it",
        )
        self.sac_config.validate()
        self.diffusion.validate()
        require(
            self.sac.buffer_size >= self.sac.total_steps,
            f"sac.buffer_size={self.sac.buffer_size} < total_steps: the diffusion model "
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


class SyntheticBuffer(NamedTuple):
    """Online SynthER's ``SACState.aux``: the synthetic transitions, regenerated at each refit."""

    data: Transition  # [num_synthetic]
    ready: jax.Array  # bool []: False until the first refit


def mixed_batch(
    state: SACState, key: jax.Array, batch_size: int, synthetic_rows: int
) -> Transition:
    """Transition [batch_size]: uniform rows of SAC's buffer, the last ``synthetic_rows`` of
    them replaced by uniform rows of ``state.aux`` (a ``SyntheticBuffer``) once it is ready."""
    k_real, k_syn = jax.random.split(key)
    real = replay_sample(state.buffer, k_real, batch_size)
    synthetic = state.aux
    idx = jax.random.randint(k_syn, (synthetic_rows,), 0, synthetic.data.reward.shape[0])
    num_real = batch_size - synthetic_rows
    tail = jax.tree.map(
        lambda s, r: jnp.where(synthetic.ready, s[idx], r[num_real:]), synthetic.data, real
    )
    return jax.tree.map(lambda r, t: jnp.concatenate([r[:num_real], t]), real, tail)


def make_synther(config: SynthERConfig, env: Any, env_params: Any) -> Agent:
    """Online SynthER on ``env`` as an ``agents.core.Agent``: ``agents.sac`` with mixed batches
    and a refit after every update (``train`` skips the last one, which no batch would use)."""
    config.validate()
    sac_cfg = config.sac_config
    batch = functools.partial(
        mixed_batch,
        batch_size=sac_cfg.batch_size,
        synthetic_rows=round(config.synthetic_ratio * sac_cfg.batch_size),
    )
    sac = make_sac(sac_cfg, env, env_params, sample_batch=batch)
    obs_dim = int(env.observation_space(env_params).shape[0])
    space = env.action_space(env_params)
    act_dim = int(space.shape[0])
    dim = 2 * obs_dim + act_dim + 2
    model = make_diffusion(config.diffusion, dim)
    num_chunks = config.num_synthetic // config.sample_chunk

    def refit(state: SACState, key: jax.Array) -> SACState:
        """A fresh diffusion model fitted to the real buffer; its samples become state.aux."""
        k_init, k_train, k_sample = jax.random.split(key, 3)
        data, size = replay_contents(state.buffer)
        vectors = transitions_to_vectors(data)
        normalizer = Normalizer.fit(vectors, ddof=1, eps=1e-5, skip_dims=(dim - 1,), size=size)
        diffusion, _ = model.train(model.init(k_init, normalizer), vectors, k_train, size=size)
        keys = jax.random.split(k_sample, num_chunks)
        samples = jax.lax.map(lambda k: model.sample(diffusion, k, config.sample_chunk), keys)
        synthetic = vectors_to_transitions(samples.reshape(-1, dim), obs_dim)
        if config.clip_actions:
            synthetic = synthetic._replace(action=jnp.clip(synthetic.action, space.low, space.high))
        return state._replace(aux=SyntheticBuffer(synthetic, jnp.array(True)))

    def init(key: jax.Array) -> SACState:
        n = config.num_synthetic
        empty = Transition(
            jnp.zeros((n, obs_dim)),
            jnp.zeros((n, act_dim)),
            jnp.zeros((n,)),
            jnp.zeros((n, obs_dim)),
            jnp.zeros((n,), bool),
            jnp.zeros((n,), bool),
        )
        return sac.init(key)._replace(aux=SyntheticBuffer(empty, jnp.array(False)))

    def update(state: SACState, then_refit: bool | jax.Array = True) -> tuple[SACState, dict]:
        state, metrics = sac.update(state)
        key, k_refit = jax.random.split(state.key)
        state = jax.lax.cond(then_refit, refit, lambda s, _: s, state._replace(key=key), k_refit)
        return state, metrics

    def train(key: jax.Array) -> tuple[SACState, dict]:
        # The last period's refit would feed no gradient step: skip it. The predicate is the
        # (unbatched) update index, so under vmap this stays a real branch, not a select.
        last = config.num_updates - 1
        return jax.lax.scan(lambda s, i: update(s, i < last), init(key), jnp.arange(last + 1))

    return Agent(
        sac.policy,
        init,
        sac.learn,
        update,
        sac.policy_params,
        num_updates=config.num_updates,
        steps_per_update=config.retrain_every,
        train=train,
        steps_before=config.sac.learning_starts,
    )
