"""Networks shared by every agent: MLPs, a resettable GRU core and actor-critic heads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": nn.tanh,
    "relu": nn.relu,
    "leaky_relu": nn.leaky_relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name``; a ValueError lists the known ones otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@jax.custom_batching.custom_vmap
def _qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:  # [m, n] -> Q [m, n], R [n, n]
    q, r = jnp.linalg.qr(a)
    return q, r


@_qr.def_vmap
def _qr_one_at_a_time(axis_size, in_batched, a):
    # A batched QR on CPU splits the batch over XLA's intra-op pool and blocks its thread
    # until the pieces finish; two of them at once on a 2-thread pool wait on each other
    # forever (jaxlib's LAPACK ParallelBatchMap). One matrix at a time runs inline.
    return jax.lax.map(_qr, a), (True, True)


def orthogonal(scale: float = 1.0) -> Callable[..., jax.Array]:
    """``flax.linen.initializers.orthogonal`` for 2-D kernels, bit for bit, safe under vmap."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        if len(shape) != 2:
            raise ValueError(f"orthogonal init expects a 2-D kernel [in, out], got {shape}")
        n_rows, n_cols = shape
        transpose = n_rows < n_cols
        a = jax.random.normal(key, (n_cols, n_rows) if transpose else (n_rows, n_cols), dtype)
        q, r = _qr(a)
        q = q * jnp.sign(jnp.diag(r))[None, :]
        return scale * (q.T if transpose else q)

    return init


def dense(features: int, scale: float = np.sqrt(2.0)) -> nn.Dense:
    """A dense layer with orthogonal init of the given gain and zero bias."""
    return nn.Dense(features, kernel_init=orthogonal(scale))


class MLP(nn.Module):
    """Dense layers with an activation after each hidden layer (and the last, if asked)."""

    features: Sequence[int]
    activation: str = "tanh"
    activate_final: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., features[-1]]
        act = activation_fn(self.activation)
        for i, width in enumerate(self.features):
            x = dense(width)(x)
            if i < len(self.features) - 1 or self.activate_final:
                x = act(x)
        return x


class ConvTorso(nn.Module):
    """3x3 convolutions (stride 1, same padding, ReLU; MinAtar's DQN torso for ``(16,)``) over
    image observations, flattened: [..., H, W, C] -> [..., H * W * channels[-1]]. No channels:
    the input unchanged (flat observations)."""

    channels: Sequence[int] = (16,)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.channels:
            return x

        def init(key, shape, dtype=jnp.float32):  # orthogonal over [kh * kw * in, out]
            flat = orthogonal(np.sqrt(2.0))(key, (int(np.prod(shape[:-1])), shape[-1]), dtype)
            return flat.reshape(shape)

        lead = x.shape[:-3]
        x = x.reshape((-1, *x.shape[-3:])).astype(jnp.float32)
        for c in self.channels:
            x = nn.relu(nn.Conv(c, (3, 3), kernel_init=init)(x))
        return x.reshape((*lead, -1))


def image_channels(obs_shape: Sequence[int], conv: Sequence[int], who: str) -> tuple[int, ...]:
    """The conv channels for observations of ``obs_shape``: ``conv`` for images [H, W, C],
    none for flat [D]; any other shape raises an error naming ``who``."""
    if len(obs_shape) not in (1, 3):
        raise ValueError(
            f"{who} takes flat [D] or image [H, W, C] observations, got shape {tuple(obs_shape)}; "
            "flatten or reshape them with an observation wrapper"
        )
    if len(obs_shape) == 3 and not conv:
        raise ValueError(
            f"{who}: image observations {tuple(obs_shape)} need conv channels, e.g. (16,)"
        )
    return tuple(conv) if len(obs_shape) == 3 else ()


class PolicyHead(nn.Module):
    """A categorical (``discrete``) or diagonal-Gaussian policy over ``action_dim`` actions."""

    action_dim: int
    discrete: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> distrax.Distribution:  # [..., H] -> dist over [...]
        out = dense(self.action_dim, scale=0.01)(x)
        if self.discrete:
            return distrax.Categorical(logits=out)
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return distrax.MultivariateNormalDiag(out, jnp.exp(log_std))


class ActorCritic(nn.Module):
    """Separate actor and critic MLP torsos; returns the policy and the value."""

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    conv: Sequence[int] = ()  # image observations: each torso's ConvTorso channels

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[distrax.Distribution, jax.Array]:
        # obs [..., obs_dim] (or [..., H, W, C] with conv) -> (dist over [...], value [...])
        torso = lambda: MLP(self.hidden, self.activation)(ConvTorso(self.conv)(obs))
        pi = PolicyHead(self.action_dim, self.discrete)(torso())
        value = dense(1, scale=1.0)(torso())
        return pi, value[..., 0]


class ResettableGRU(nn.Module):
    """A GRU scanned over time whose hidden state is zeroed where ``resets`` is set."""

    hidden_size: int

    @nn.compact
    def __call__(
        self, carry: jax.Array, xs: jax.Array, resets: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        # carry [B, H], xs [T, B, D], resets [T, B] -> (carry [B, H], ys [T, B, H])
        def step(cell, h, inputs):
            x, reset = inputs
            h = jnp.where(reset[:, None], jnp.zeros_like(h), h)
            return cell(h, x)

        scan = nn.scan(
            step, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0
        )
        return scan(nn.GRUCell(self.hidden_size), carry, (xs, resets))

    @staticmethod
    def initial_carry(batch_size: int, hidden_size: int) -> jax.Array:  # [B, H]
        return jnp.zeros((batch_size, hidden_size), jnp.float32)


def recurrent_torso(
    carry: jax.Array,
    obs: jax.Array,
    resets: jax.Array,
    embed: Sequence[int],
    hidden_size: int,
    activation: str,
    conv: Sequence[int] = (),
) -> tuple[jax.Array, jax.Array]:
    """(Conv torso for images ->) embedding MLP -> resettable GRU, built in the calling module's
    scope (call it inside a ``@nn.compact`` method). carry [B, H], obs [T, B, D] (or
    [T, B, H, W, C] with ``conv``), resets [T, B] -> (carry, x [T, B, H])."""
    x = MLP(embed, activation)(ConvTorso(conv)(obs))
    return ResettableGRU(hidden_size)(carry, x, resets)


class RecurrentActorCritic(nn.Module):
    """``recurrent_torso`` -> actor and critic MLP heads (shared memory)."""

    action_dim: int
    discrete: bool
    embed: Sequence[int] = (128,)
    hidden_size: int = 128
    head: Sequence[int] = (128,)
    activation: str = "tanh"
    conv: Sequence[int] = ()  # image observations: ConvTorso channels before the embedding

    @nn.compact
    def __call__(
        self, carry: jax.Array, obs: jax.Array, resets: jax.Array
    ) -> tuple[jax.Array, distrax.Distribution, jax.Array]:
        # carry [B, H], obs [T, B, obs_dim], resets [T, B] -> carry, dist over [T, B], value [T, B]
        carry, x = recurrent_torso(
            carry, obs, resets, self.embed, self.hidden_size, self.activation, self.conv
        )
        pi = PolicyHead(self.action_dim, self.discrete)(MLP(self.head, self.activation)(x))
        value = dense(1, scale=1.0)(MLP(self.head, self.activation)(x))
        return carry, pi, value[..., 0]


def torch_dense(features: int) -> nn.Dense:
    """A dense layer initialised like PyTorch's ``nn.Linear`` (uniform, variance 1/(3 fan_in)).

    Residual stacks without normalisation (SynthER's denoiser) keep their activations in scale
    with this init; orthogonal sqrt(2) init would double the variance at every block.
    """
    return nn.Dense(
        features, kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    )


class ResidualMLP(nn.Module):
    """Linear -> ``num_blocks`` residual blocks -> LN? -> act -> Linear(out_dim).

    A block is ``x + Linear(act(LN?(x)))`` (SynthER's denoiser), or with ``expand`` > 0
    ``x + Linear(act(Linear_{expand * width}(LN?(dropout(x)))))`` (IDQL's noise network).
    """

    width: int
    num_blocks: int
    out_dim: int
    activation: str = "relu"
    layer_norm: bool = False
    expand: int = 0
    dropout: float = 0.0
    final_norm: bool = True  # the layer norm (if any) before the output layer

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # [..., D] -> [..., out_dim]; ``train`` turns dropout on (rng "dropout")
        act = activation_fn(self.activation)
        norm = nn.LayerNorm if self.layer_norm else lambda: lambda h: h
        x = torch_dense(self.width)(x)
        for _ in range(self.num_blocks):
            if self.expand:
                h = nn.Dropout(self.dropout, deterministic=not train)(x)
                h = act(torch_dense(self.expand * self.width)(norm()(h)))
                x = x + torch_dense(self.width)(h)
            else:
                x = x + torch_dense(self.width)(act(norm()(x)))
        return torch_dense(self.out_dim)(act(norm()(x) if self.final_norm else x))


class Critic(nn.Module):
    """A state-action value MLP: Q(obs, action)."""

    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        # obs [..., obs_dim], action [..., act_dim] -> q [...]
        x = MLP(self.hidden, self.activation)(jnp.concatenate([obs, action], axis=-1))
        return dense(1, scale=1.0)(x)[..., 0]


class CriticEnsemble(nn.Module):
    """``num_critics`` independently initialised critics evaluated at once (twin critics: 2)."""

    num_critics: int = 2
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        # obs [..., obs_dim], action [..., act_dim] -> q [num_critics, ...]
        ensemble = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        return ensemble(self.hidden, self.activation)(obs, action)
