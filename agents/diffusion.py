"""EDM diffusion (Karras et al., 2022) over flat vectors: SynthER's generative model of experience.

    model = make_diffusion(config, data_dim)            # cond_dim > 0: a conditional model
    state, losses = fit(model, data, key, skip_dims=(data_dim - 1,))   # config.total_steps
    samples = jax.jit(model.sample, static_argnums=2)(state, key, 10_000)   # [10_000, data_dim]

    state = model.init(key, Normalizer.fit(data, ddof=1, eps=1e-5))   # the same, jittable
    state, losses = model.train(state, data, key)   # config.total_steps learns (gradient steps)

The denoiser is SynthER's residual MLP (random Fourier features of the noise level, a linear
projection of the input, ``num_blocks`` residual blocks), wrapped in EDM's preconditioning and
trained with EDM's log-normal noise levels and loss weighting; AdamW with a cosine schedule,
gradient clipping and an EMA copy of the weights (ema-pytorch's warm-up, as in the reference),
from which ``sample`` draws with the stochastic Heun sampler. Data are z-scored per dimension
(``envs.wrappers.Normalizer``: unbiased std + 1e-5, as in the reference); dimensions in
``skip_dims`` (terminal flags) are left as they are. Training and sampling are ``lax.scan``
loops, so a whole fit-and-sample fits inside one jitted program (online SynthER retrains inside
its training scan). An optional conditioning input (``cond``, concatenated to the noisy input)
lets the same model serve diffusion policies.

The module's second form is DDPM as IDQL writes it, which diffusion policies use (PSEC's base
and skills, ``agents.diffusion_policy``): ``vp_betas`` (a T-step variance-preserving schedule),
``NoiseNet`` (learnable Fourier features of the step, a LayerNorm residual MLP with dropout),
``ddpm_loss`` (eps-prediction, optionally weighted per example) and ``ddpm_sample`` (ancestral
sampling, clipped after every step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState
from tqdm import tqdm

from agents.core import check_losses
from agents.hparams import check_fits, require, require_fields, static, sweepable
from agents.networks import ResidualMLP, activation_fn, torch_dense
from envs.core import is_concrete
from envs.wrappers import Normalizer


@struct.dataclass
class DiffusionConfig:
    """Denoiser size, training and sampler settings (defaults: the reference's, at CPU width)."""

    width: int = static(512)  # residual MLP width (reference: 2048 offline, 1024 online)
    num_blocks: int = static(6)
    embed_dim: int = static(128)  # input projection and noise-level embedding width
    fourier_dim: int = static(16)  # random Fourier features of the noise level
    layer_norm: bool = static(False)
    total_steps: int = static(10_000)  # gradient steps (reference: 100k)
    batch_size: int = static(256)  # reference: 256 (1024 for datasets of 800k or more)
    num_sample_steps: int = static(128)
    cosine_lr: bool = static(True)
    ema_every: int = static(10)  # optimiser steps between EMA updates
    ema_start: int = static(100)  # the EMA copies the weights until this step
    lr: float = sweepable(3e-4)
    adam_b2: float = sweepable(0.99)
    weight_decay: float = sweepable(0.0)  # AdamW, kernels only
    max_grad_norm: float = sweepable(1.0)
    ema_decay: float = sweepable(0.995)  # the EMA's decay after warm-up
    ema_power: float = sweepable(2 / 3)  # warm-up: decay = 1 - (step - ema_start) ** -ema_power
    sigma_data: float = sweepable(1.0)
    p_mean: float = sweepable(-1.2)  # training noise levels: log sigma ~ N(p_mean, p_std^2)
    p_std: float = sweepable(1.2)
    sigma_min: float = sweepable(0.002)
    sigma_max: float = sweepable(80.0)
    rho: float = sweepable(7.0)
    s_churn: float = sweepable(80.0)
    s_tmin: float = sweepable(0.05)
    s_tmax: float = sweepable(50.0)
    s_noise: float = sweepable(1.003)

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        for name in ("width", "embed_dim", "total_steps", "batch_size", "num_sample_steps"):
            require(getattr(self, name) >= 1, f"DiffusionConfig.{name} must be >= 1")
        for name in ("num_blocks", "ema_start"):
            require(getattr(self, name) >= 0, f"DiffusionConfig.{name} must be >= 0")
        require(self.ema_every >= 1, "DiffusionConfig.ema_every must be >= 1")
        require(
            self.fourier_dim >= 2 and self.fourier_dim % 2 == 0,
            f"DiffusionConfig.fourier_dim={self.fourier_dim} must be even and >= 2 "
            "(sine and cosine of each random frequency)",
        )
        require_fields(
            self,
            {
                "lr": (lambda v: v > 0, "> 0"),
                "adam_b2": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
                "weight_decay": (lambda v: v >= 0, ">= 0"),
                "max_grad_norm": (lambda v: v > 0, "> 0"),
                "ema_decay": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
                "ema_power": (lambda v: v > 0, "> 0"),
                "sigma_data": (lambda v: v > 0, "> 0"),
                "p_std": (lambda v: v > 0, "> 0"),
                "sigma_min": (lambda v: v > 0, "> 0"),
                "rho": (lambda v: v > 0, "> 0"),
                "s_churn": (lambda v: v >= 0, ">= 0"),
                "s_noise": (lambda v: v > 0, "> 0"),
            },
        )
        if is_concrete(self.sigma_max) and is_concrete(self.sigma_min):
            require(
                bool(np.all(np.asarray(self.sigma_max) > np.asarray(self.sigma_min))),
                f"DiffusionConfig.sigma_max={self.sigma_max} must exceed "
                f"sigma_min={self.sigma_min}",
            )


# Named configurations; report which one each figure used.
PRESETS: dict[str, DiffusionConfig] = {
    # SynthER offline (D4RL): 2048 x 6 blocks (25.6M parameters), 100k steps, 128 Heun steps.
    "reference": DiffusionConfig(width=2048, total_steps=100_000),
    # SynthER online (retrained every 10k environment steps): width 1024.
    "reference_online": DiffusionConfig(width=1024, total_steps=100_000),
    # This 2-core CPU: width 256 (0.5M parameters), 10k steps, 32 Heun steps.
    "cpu": DiffusionConfig(width=256, total_steps=10_000, num_sample_steps=32),
}


# --------------------------------------------------------------------------------------------
# Data: checks and memory


def check_data(data: Any, data_dim: int | None = None, what: str = "data") -> None:
    """Raise a ValueError unless ``data`` is a non-empty, finite [N, data_dim] array.

    Values are only inspected when ``data`` is concrete (not traced inside ``jax.jit``).
    """
    shape = tuple(np.shape(data))
    require(
        len(shape) == 2,
        f"{what} must be a [num_examples, dim] array of flat vectors, got shape {shape}; "
        "flatten transitions with agents.replay.synthetic.transitions_to_vectors",
    )
    require(shape[0] >= 1, f"{what} is empty (shape {shape}); it needs at least one example")
    require(
        data_dim is None or shape[1] == data_dim,
        f"{what} has dimension {shape[1]} but the diffusion model was built for {data_dim}; "
        "build the model with make_diffusion(config, data_dim=...) for this data",
    )
    if is_concrete(data):
        bad = ~np.isfinite(np.asarray(data))
        if bad.any():
            rows, cols = np.nonzero(bad)
            raise ValueError(
                f"{what} has {bad.sum()} non-finite values (NaN or inf), first at row {rows[0]}, "
                f"dimension {cols[0]} (in {len(set(cols.tolist()))} dimensions); remove or "
                "repair those examples before fitting"
            )


# --------------------------------------------------------------------------------------------
# EDM: preconditioning, loss weighting, noise schedule and the stochastic Heun sampler


def preconditioning(
    sigma: jax.Array, sigma_data: float
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """EDM's (c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (Karras et al., Table 1)."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sd2)
    c_in = 1.0 / jnp.sqrt(sigma**2 + sd2)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: jax.Array, sigma_data: float) -> jax.Array:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 = 1 / c_out^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sigma_schedule(config: DiffusionConfig) -> jax.Array:
    """The sampler's noise levels [num_sample_steps + 1], sigma_max down to sigma_min, then 0."""
    n = config.num_sample_steps
    inv_rho = 1.0 / config.rho
    frac = jnp.arange(n, dtype=jnp.float32) / max(n - 1, 1)
    hi, lo = config.sigma_max**inv_rho, config.sigma_min**inv_rho
    sigmas = (hi + frac * (lo - hi)) ** config.rho
    return jnp.concatenate([sigmas, jnp.zeros((1,), sigmas.dtype)])


# denoise(x [B, D], sigma []) -> the denoised estimate [B, D]
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def heun_sample(
    denoise: DenoiseFn, key: jax.Array, shape: tuple[int, ...], config: DiffusionConfig
) -> jax.Array:
    """Draw ``shape`` [B, D] samples with EDM's stochastic 2nd-order Heun sampler (Algorithm 2).

    Each step first raises the noise level by a factor 1 + gamma (churn, only for sigma in
    [s_tmin, s_tmax]), then takes a Heun step to the next level; the last step (to sigma 0)
    is an Euler step.
    """
    n = config.num_sample_steps
    sigmas = sigma_schedule(config)
    in_churn = (sigmas >= config.s_tmin) & (sigmas <= config.s_tmax)
    gammas = jnp.where(in_churn, jnp.minimum(config.s_churn / n, math.sqrt(2.0) - 1.0), 0.0)
    k_init, k_steps = jax.random.split(key)
    x = sigmas[0] * jax.random.normal(k_init, shape)

    def step(x, inputs, second_order: bool):
        sigma, sigma_next, gamma, k = inputs
        sigma_hat = sigma * (1.0 + gamma)
        noise = config.s_noise * jax.random.normal(k, shape)
        x_hat = x + sigma * jnp.sqrt(gamma * (2.0 + gamma)) * noise  # sqrt(sigma_hat^2 - sigma^2)
        slope = (x_hat - denoise(x_hat, sigma_hat)) / sigma_hat
        x_next = x_hat + (sigma_next - sigma_hat) * slope
        if second_order:
            slope_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x_hat + 0.5 * (sigma_next - sigma_hat) * (slope + slope_next)
        return x_next

    steps = (sigmas[:-1], sigmas[1:], gammas[:-1], jax.random.split(k_steps, n))
    heun_steps = jax.tree.map(lambda a: a[:-1], steps)
    x, _ = jax.lax.scan(lambda x, inputs: (step(x, inputs, True), None), x, heun_steps)
    return step(x, jax.tree.map(lambda a: a[-1], steps), False)


# --------------------------------------------------------------------------------------------
# The denoiser network and the model


class Denoiser(nn.Module):
    """SynthER's residual-MLP denoiser F(x, c_noise [, cond]) -> [..., out_dim]."""

    out_dim: int
    width: int
    num_blocks: int
    embed_dim: int = 128
    fourier_dim: int = 16
    layer_norm: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, c_noise: jax.Array, cond: jax.Array | None = None
    ) -> jax.Array:
        # x [B, D], c_noise [B], cond [B, C] or None -> [B, out_dim]
        # Random Fourier features: fixed frequencies (kept out of the gradient), as in SynthER.
        freqs = self.param("fourier", nn.initializers.normal(1.0), (self.fourier_dim // 2,))
        t = c_noise[..., None]
        angles = 2.0 * jnp.pi * t * jax.lax.stop_gradient(freqs)
        emb = jnp.concatenate([t, jnp.sin(angles), jnp.cos(angles)], axis=-1)
        emb = torch_dense(self.embed_dim)(nn.silu(torch_dense(self.embed_dim)(emb)))
        if cond is not None:
            x = jnp.concatenate([x, cond], axis=-1)
        h = torch_dense(self.embed_dim)(x) + emb
        return ResidualMLP(self.width, self.num_blocks, self.out_dim, "relu", self.layer_norm)(h)


class DiffusionState(NamedTuple):
    """A diffusion model being trained: weights and optimiser, their EMA, the data scaling."""

    train_state: TrainState
    ema_params: Any
    normalizer: Normalizer


class Diffusion(NamedTuple):
    """One diffusion model: its shapes and pure functions (see the module docstring)."""

    config: DiffusionConfig
    data_dim: int
    cond_dim: int
    network: Denoiser
    init: Callable[..., DiffusionState]  # (key, normalizer) -> state
    denoise: Callable[..., jax.Array]  # (params, x, sigma, cond) -> D(x; sigma), normalised space
    loss: Callable[..., jax.Array]  # (params, x0, key, cond) -> scalar, normalised space
    learn: Callable[..., tuple[DiffusionState, jax.Array]]  # (state, batch, key, cond): 1 step
    train: Callable[..., tuple[DiffusionState, jax.Array]]  # (state, data, key, cond, size, n)
    sample: Callable[..., jax.Array]  # (state, key, num_samples, cond, use_ema) -> [num, D]


def num_params(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def make_diffusion(config: DiffusionConfig, data_dim: int, cond_dim: int = 0) -> Diffusion:
    """Build an EDM diffusion model over [data_dim] vectors (conditioned on [cond_dim] if > 0)."""
    config.validate()
    require(data_dim >= 1, f"data_dim={data_dim} must be >= 1")
    require(cond_dim >= 0, f"cond_dim={cond_dim} must be >= 0 (0: unconditional)")
    network = Denoiser(
        data_dim,
        config.width,
        config.num_blocks,
        config.embed_dim,
        config.fourier_dim,
        config.layer_norm,
    )

    def check_cond(cond, rows: int | None, what: str) -> None:
        if cond_dim == 0:
            require(cond is None, f"{what}: this model is unconditional (cond_dim=0); drop cond")
            return
        require(cond is not None, f"{what}: this model needs cond of shape [N, {cond_dim}]")
        shape = tuple(np.shape(cond))
        require(
            len(shape) == 2 and shape[1] == cond_dim and (rows is None or shape[0] == rows),
            f"{what}: cond has shape {shape}, expected [{rows if rows else 'N'}, {cond_dim}]",
        )

    def make_optimizer() -> optax.GradientTransformation:
        lr = config.lr
        if config.cosine_lr:
            lr = optax.cosine_decay_schedule(config.lr, config.total_steps)
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        return optax.chain(
            optax.clip_by_global_norm(config.max_grad_norm),
            optax.adamw(
                lr, b1=0.9, b2=config.adam_b2, weight_decay=config.weight_decay, mask=decay_mask
            ),
        )

    def init(key: jax.Array, normalizer: Normalizer) -> DiffusionState:
        require(
            np.shape(normalizer.mean) == (data_dim,) and np.shape(normalizer.std) == (data_dim,),
            f"the normalizer is for dimension {np.shape(normalizer.mean)}, the model for "
            f"{data_dim}; fit it on this model's data",
        )
        x = jnp.zeros((1, data_dim))
        cond = jnp.zeros((1, cond_dim)) if cond_dim else None
        params = network.init(key, x, jnp.zeros((1,)), cond)
        ts = TrainState.create(apply_fn=network.apply, params=params, tx=make_optimizer())
        return DiffusionState(ts, params, normalizer)

    def denoise(params, x: jax.Array, sigma: jax.Array, cond=None) -> jax.Array:
        # x [B, D] (normalised), sigma [] or [B] -> D(x; sigma) [B, D]
        sigma = jnp.broadcast_to(sigma, x.shape[:-1])
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, config.sigma_data)
        out = network.apply(params, c_in[..., None] * x, c_noise, cond)
        return c_skip[..., None] * x + c_out[..., None] * out

    def loss(params, x0: jax.Array, key: jax.Array, cond=None) -> jax.Array:
        # x0 [B, D] (normalised) -> EDM's weighted denoising loss
        k_sigma, k_noise = jax.random.split(key)
        sigma = jnp.exp(config.p_mean + config.p_std * jax.random.normal(k_sigma, x0.shape[:1]))
        noisy = x0 + sigma[:, None] * jax.random.normal(k_noise, x0.shape)
        err = jnp.mean(jnp.square(denoise(params, noisy, sigma, cond) - x0), axis=-1)
        return jnp.mean(loss_weight(sigma, config.sigma_data) * err)

    def learn(state: DiffusionState, batch: jax.Array, key: jax.Array, cond=None):
        # one gradient step: batch [B, D] in data units -> (state, loss)
        ts = state.train_state
        x0 = state.normalizer.normalize(batch)
        value, grads = jax.value_and_grad(loss)(ts.params, x0, key, cond)
        ts = ts.apply_gradients(grads=grads)
        # ema-pytorch (the reference): copy until ema_start, then every ema_every steps move
        # towards the weights with decay min(ema_decay, 1 - (step - ema_start) ** -ema_power).
        step = ts.step.astype(jnp.float32)
        warm = 1.0 - jnp.maximum(step - config.ema_start, 1.0) ** -config.ema_power
        decay = jnp.where(step <= config.ema_start, 0.0, jnp.minimum(config.ema_decay, warm))
        decay = jnp.where(ts.step % config.ema_every == 0, decay, 1.0)
        ema = optax.incremental_update(ts.params, state.ema_params, 1.0 - decay)
        return DiffusionState(ts, ema, state.normalizer), value

    def train(
        state: DiffusionState,
        data: jax.Array,
        key: jax.Array,
        cond=None,
        size: jax.Array | int | None = None,
        num_steps: int | None = None,
    ) -> tuple[DiffusionState, jax.Array]:
        """``num_steps`` (default config.total_steps) learns on batches drawn uniformly
        with replacement from the first ``size`` rows of ``data`` [N, D] (and ``cond`` [N, C]).
        Returns the state and the losses [num_steps]. Batches are keyed by ``key`` and the
        step count, so two calls of n steps equal one call of 2n."""
        check_data(data, data_dim, "diffusion training data")
        check_cond(cond, np.shape(data)[0], "train")
        num_steps = config.total_steps if num_steps is None else num_steps
        require(num_steps >= 1, f"num_steps={num_steps} must be >= 1")
        n = data.shape[0] if size is None else size

        def body(state, _):
            # keyed by the step count, so training in chunks equals training in one go
            k = jax.random.fold_in(key, state.train_state.step)
            k_idx, k_loss = jax.random.split(k)
            idx = jax.random.randint(k_idx, (config.batch_size,), 0, n)
            c = None if cond is None else cond[idx]
            return learn(state, data[idx], k_loss, c)

        return jax.lax.scan(body, state, None, num_steps)

    def sample(
        state: DiffusionState, key: jax.Array, num_samples: int, cond=None, use_ema: bool = True
    ) -> jax.Array:
        """``num_samples`` [num_samples, D] samples in data units (from the EMA weights)."""
        require(
            isinstance(num_samples, int | np.integer) and num_samples >= 1,
            f"num_samples={num_samples!r} must be a positive int (static under jit)",
        )
        check_cond(cond, num_samples, "sample")
        check_fits(
            4 * num_samples * (8 * data_dim + 4 * config.width),
            f"sampling {num_samples} vectors at once",
            "draw fewer at a time (agents.synther.upsample samples in chunks)",
        )
        params = state.ema_params if use_ema else state.train_state.params
        x = heun_sample(
            lambda x, sigma: denoise(params, x, sigma, cond), key, (num_samples, data_dim), config
        )
        return state.normalizer.unnormalize(x)

    return Diffusion(config, data_dim, cond_dim, network, init, denoise, loss, learn, train, sample)


def fit(
    model: Diffusion,
    data: Any,
    key: jax.Array,
    skip_dims: tuple[int, ...] = (),
    cond: Any = None,
    chunk_steps: int = 1000,
    progress: bool = False,
) -> tuple[DiffusionState, np.ndarray]:
    """Train a fresh ``model`` on ``data`` [N, D] (host or device) for config.total_steps.

    Checks the data before anything compiles, z-scores it (``skip_dims`` unscaled), and runs
    the jitted training loop in chunks of ``chunk_steps`` (compiled once, twice if they do not
    divide the total; the result does not depend on them). Returns the trained state and the
    training losses [total_steps].
    """
    check_data(data, model.data_dim, "diffusion training data")
    if cond is not None:
        check_data(cond, model.cond_dim, "diffusion conditioning input")
    require(chunk_steps >= 1, f"chunk_steps={chunk_steps} must be >= 1")
    data = jnp.asarray(data, jnp.float32)
    cond = None if cond is None else jnp.asarray(cond, jnp.float32)
    k_init, k_train = jax.random.split(key)
    state = model.init(k_init, Normalizer.fit(data, ddof=1, eps=1e-5, skip_dims=skip_dims))
    total = model.config.total_steps
    chunk = min(chunk_steps, total)
    train = jax.jit(model.train, static_argnames="num_steps")
    losses, done = [], 0
    with tqdm(total=total, disable=not progress, desc="diffusion steps") as bar:
        while done < total:
            n = min(chunk, total - done)
            state, chunk_losses = train(state, data, k_train, cond, num_steps=n)
            losses.append(np.asarray(chunk_losses))
            check_losses({"loss": losses[-1]}, "diffusion training", start=done)
            done += n
            bar.update(n)
            bar.set_postfix(loss=f"{losses[-1][-max(1, n // 10) :].mean():.4f}")
    return state, np.concatenate(losses)


# --------------------------------------------------------------------------------------------
# DDPM in IDQL's form: the diffusion policies' model (few steps, eps-prediction, clipped)


def vp_betas(num_steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> jax.Array:
    """IDQL's variance-preserving noise schedule: betas [num_steps] of a discretised VP SDE."""
    require(num_steps >= 1, f"num_steps={num_steps} must be >= 1")
    t = jnp.arange(1, num_steps + 1, dtype=jnp.float32)
    T = float(num_steps)
    alpha = jnp.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * t - 1) / T**2)
    return 1.0 - alpha


class NoiseNet(nn.Module):
    """IDQL's noise predictor eps(x_t, t, cond) -> [..., out_dim].

    Learnable Fourier features of the step t (``time_dim``) through an MLP (2 x 2 time_dim,
    mish), concatenated with x_t and cond, then a residual MLP of ``num_blocks`` blocks
    ``x + Dense(mish(Dense_{4 width}(LayerNorm(dropout(x)))))`` and mish -> Dense(out_dim).
    """

    out_dim: int
    width: int = 256
    num_blocks: int = 3
    time_dim: int = 64
    dropout: float = 0.1

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, cond: jax.Array, train: bool = False
    ) -> jax.Array:
        # x [B, D], t [B] (step index), cond [B, C] -> [B, out_dim]
        freqs = self.param("fourier", nn.initializers.normal(0.2), (self.time_dim // 2,))
        angles = 2.0 * jnp.pi * t.astype(jnp.float32)[..., None] * freqs
        emb = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
        mish = activation_fn("mish")
        emb = nn.Dense(2 * self.time_dim)(mish(nn.Dense(2 * self.time_dim)(emb)))
        h = jnp.concatenate([x, cond, emb], axis=-1)
        net = ResidualMLP(
            self.width, self.num_blocks, self.out_dim, "mish", True, 4, self.dropout, False
        )
        return net(h, train)


def ddpm_loss(
    eps_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    key: jax.Array,
    betas: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
    """The (optionally per-example ``weights`` [B]) eps-prediction loss of ``eps_fn(x_t, t)``
    on clean ``x0`` [B, D] at a uniformly drawn step t, as in DDPM and IDQL."""
    k_t, k_noise = jax.random.split(key)
    alpha_hat = jnp.cumprod(1.0 - betas)
    t = jax.random.randint(k_t, x0.shape[:1], 0, betas.shape[0])
    noise = jax.random.normal(k_noise, x0.shape)
    a = alpha_hat[t][:, None]
    err = jnp.mean(jnp.square(eps_fn(jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise, t) - noise), -1)
    return jnp.mean(err if weights is None else weights * err)


def ddpm_sample(
    eps_fn: Callable[[jax.Array, jax.Array], jax.Array],
    key: jax.Array,
    shape: tuple[int, int],
    betas: jax.Array,
    clip: float = 1.0,
    temperature: float = 1.0,
) -> jax.Array:
    """Ancestral DDPM samples [shape] of ``eps_fn(x_t, t)``, clipped to [-clip, clip] after
    every step (IDQL's sampler: noise ``sqrt(beta_t) * temperature`` for t > 0)."""
    alphas = 1.0 - betas
    alpha_hat = jnp.cumprod(alphas)

    def step(x, inputs):
        t, k = inputs
        eps = eps_fn(x, jnp.full(shape[:1], t))
        x = (x - (1 - alphas[t]) / jnp.sqrt(1 - alpha_hat[t]) * eps) / jnp.sqrt(alphas[t])
        z = jax.random.normal(k, shape)
        x = x + (t > 0) * jnp.sqrt(betas[t]) * temperature * z
        return jnp.clip(x, -clip, clip), None

    k_init, k_steps = jax.random.split(key)
    steps = jnp.arange(betas.shape[0])[::-1]
    x, _ = jax.lax.scan(
        step, jax.random.normal(k_init, shape), (steps, jax.random.split(k_steps, steps.shape[0]))
    )
    return x
