"""A probabilistic dynamics ensemble (PETS / MBPO style): K Gaussian MLPs over (obs, action),
and the model-based experience selection (MBES) of OER that walks a dataset with it.

    dynamics = make_dynamics(DynamicsConfig(), obs_dim, act_dim)
    state = dynamics.init(key)
    state, losses = dynamics.train(state, transitions, size, key)   # total_steps, one lax.scan
    mean, var = dynamics.predict(state.params, obs, action)          # next obs: [K, B, obs_dim]
    idx, stats = select_mbes(key, data, size, starts, act, predict, num=1000)  # [num] rows

Each member predicts a diagonal Gaussian over the change of observation; its log-variance is
softly bounded by learned limits (Chua et al., 2018). Members train on independent batches
(a bootstrap without resampling the data) with the Gaussian negative log-likelihood. Inputs are
the learner's units (normalised observations, actions in [-1, 1]).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from agents.hparams import require, require_fields, static, sweepable
from agents.networks import MLP, dense
from agents.replay import Transition

__all__ = ["Dynamics", "DynamicsConfig", "GaussianEnsemble", "make_dynamics", "select_mbes"]


@struct.dataclass
class DynamicsConfig:
    """Dynamics-ensemble settings (OER's reference: 5 members, Adam 1e-3)."""

    num_members: int = static(5)
    hidden: tuple[int, ...] = static((200, 200, 200))
    total_steps: int = static(5_000)  # gradient steps (reference: 500k)
    batch_size: int = static(256)  # per member
    lr: float = sweepable(1e-3)
    weight_decay: float = sweepable(1e-5)

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        for name in ("num_members", "total_steps", "batch_size"):
            require(getattr(self, name) >= 1, f"DynamicsConfig.{name} must be >= 1")
        require(all(h >= 1 for h in self.hidden), f"DynamicsConfig.hidden={self.hidden}: >= 1")
        require_fields(
            self, {"lr": (lambda v: v > 0, "> 0"), "weight_decay": (lambda v: v >= 0, ">= 0")}
        )


class _Member(nn.Module):
    hidden: tuple[int, ...]
    out_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D_in] -> [..., 2 * D_out]
        return dense(2 * self.out_dim, scale=1.0)(MLP(self.hidden, "silu")(x))


class GaussianEnsemble(nn.Module):
    """Member k's inputs [K, ..., D_in] -> its (mean, log-variance) [K, ..., D_out]."""

    num_members: int
    hidden: tuple[int, ...]
    out_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        members = nn.vmap(
            _Member,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=0,
            axis_size=self.num_members,
        )
        mean, logvar = jnp.split(members(self.hidden, self.out_dim)(x), 2, axis=-1)
        max_logvar = self.param("max_logvar", nn.initializers.constant(0.5), (self.out_dim,))
        min_logvar = self.param("min_logvar", nn.initializers.constant(-10.0), (self.out_dim,))
        logvar = max_logvar - nn.softplus(max_logvar - logvar)
        return mean, min_logvar + nn.softplus(logvar - min_logvar)


class Dynamics(NamedTuple):
    """The ensemble's functions (see the module docstring)."""

    init: Any  # key -> TrainState
    train: Any  # (state, transitions [N], size [], key) -> (state, nll [total_steps])
    predict: Any  # (params, obs [B, D], action [B, A]) -> (mean, var) [K, B, D]


def make_dynamics(config: DynamicsConfig, obs_dim: int, act_dim: int) -> Dynamics:
    """The ensemble for observations [obs_dim] and actions [act_dim]."""
    config.validate()
    net = GaussianEnsemble(config.num_members, tuple(config.hidden), obs_dim)

    def init(key: jax.Array) -> TrainState:
        params = net.init(key, jnp.zeros((config.num_members, obs_dim + act_dim)))
        tx = optax.adamw(config.lr, weight_decay=config.weight_decay)
        return TrainState.create(apply_fn=net.apply, params=params, tx=tx)

    def predict(params: Any, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = jnp.concatenate([obs, action], -1)
        mean, logvar = net.apply(params, jnp.broadcast_to(x, (config.num_members, *x.shape)))
        return obs + mean, jnp.exp(logvar)

    def train(
        state: TrainState, transitions: Transition, size: jax.Array, key: jax.Array
    ) -> tuple[TrainState, jax.Array]:
        """``config.total_steps`` steps on the first ``size`` rows of ``transitions``."""

        def step(state, key):
            shape = (config.num_members, config.batch_size)
            idx = jax.random.randint(key, shape, 0, size)  # each member its own batch
            obs, action = transitions.obs[idx], transitions.action[idx]
            target = transitions.next_obs[idx] - obs

            def loss_fn(params):
                mean, logvar = net.apply(params, jnp.concatenate([obs, action], -1))
                nll = (jnp.square(mean - target) * jnp.exp(-logvar) + logvar).mean()
                bounds = params["params"]["max_logvar"].sum() - params["params"]["min_logvar"].sum()
                return nll + 0.01 * bounds, nll

            (_, nll), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            return state.apply_gradients(grads=grads), nll

        return jax.lax.scan(step, state, jax.random.split(key, config.total_steps))

    return Dynamics(init, train, predict)


NEVER = np.iinfo(np.int32).max  # selection order of a transition not (yet) selected


def select_mbes(
    key: jax.Array,
    data: Transition,
    size: jax.Array,
    starts: jax.Array,
    act: Any,
    predict: Any,
    num: int,
    num_neighbours: int = 64,
    num_chains: int = 10,
    variance_ratio: float | jax.Array = 2.0,
    max_steps: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Model-based experience selection on one dataset ``data`` [N] (first ``size`` rows valid,
    ``starts`` [N] its episode starts): ``num`` distinct indices [num] in the order the chains
    reached them, and stats (``confident``: the fraction of chain steps that followed the model;
    ``chained``: indices the chains found before ``max_steps`` (default 20 * num / num_chains);
    the rest, if any, are drawn uniformly). ``act(obs [C, D]) -> [C, A]``;
    ``predict(obs, action) -> (mean, var)`` [K, C, D] next observations."""
    capacity = data.reward.shape[0]
    valid = jnp.arange(capacity) < size
    done = data.terminated | data.truncated
    chains = jnp.arange(num_chains)
    max_steps = 20 * num // num_chains + 1 if max_steps is None else max_steps
    start_logits = jnp.where(starts & valid, 0.0, -jnp.inf)
    restart = lambda k: jax.random.categorical(k, start_logits, shape=(num_chains,))
    sq_norm = jnp.where(valid, jnp.square(data.obs).sum(-1), jnp.inf)  # [N]

    def step(carry):
        order, current, t, key, confident_steps = carry
        key, k_member, k_restart = jax.random.split(key, 3)
        s = data.obs[current]  # [C, D]
        mean, var = predict(s, act(s))  # [K, C, D]
        member = jax.random.randint(k_member, (num_chains,), 0, mean.shape[0])
        predicted = mean[member, chains]  # [C, D]
        dist = sq_norm[None] - 2.0 * s @ data.obs.T  # [C, N]: squared distance minus |s|^2
        neighbours = jax.lax.top_k(-dist, num_neighbours)[1]  # [C, k]
        next_obs = data.next_obs[neighbours]  # [C, k, D]
        model_var = (var.mean(0) + mean.var(0)).mean(-1)  # predictive variance [C]
        confident = model_var < variance_ratio * next_obs.var(1).mean(-1)
        # the kept neighbour nearest the prediction; already kept ones only if all are
        miss = jnp.square(next_obs - predicted[:, None]).sum(-1)  # [C, k]
        miss = jnp.where(order[neighbours] < NEVER, jnp.inf, miss)
        nearest = jnp.argmin(miss, axis=1)
        chosen = jnp.where(confident, neighbours[chains, nearest], current)
        order = order.at[chosen].min(t * num_chains + chains)  # a no-op on a kept one
        successor = chosen + 1
        ends = done[chosen] | (successor >= size) | starts[jnp.minimum(successor, capacity - 1)]
        current = jnp.where(ends, restart(k_restart), successor)
        return order, current, t + 1, key, confident_steps + confident.sum()

    def running(carry):
        return ((carry[0] < NEVER).sum() < num) & (carry[2] < max_steps)

    key, k_start, k_fill = jax.random.split(key, 3)
    init = (jnp.full((capacity,), NEVER, jnp.int32), restart(k_start), 0, key, 0)
    order, _, steps, _, confident_steps = jax.lax.while_loop(running, step, init)
    chained = jnp.minimum((order < NEVER).sum(), num)  # the last step may find a few more
    chosen_first = order.astype(jnp.float32) / (max_steps * num_chains + 1)  # [0, 1)
    rank = jnp.where(order < NEVER, chosen_first, 1.0 + jax.random.uniform(k_fill, (capacity,)))
    picked = jax.lax.top_k(-jnp.where(valid, rank, jnp.inf), num)[1]
    stats = {"confident": confident_steps / jnp.maximum(steps * num_chains, 1), "chained": chained}
    return picked, stats
