"""Behaviour cloning: Adam steps on the negative log-likelihood of batches of demonstrations.

    agent = make_bc(config, policy, init, sample, nll)     # an agents.core.Agent
    state, metrics = jax.jit(agent.train)(key)              # metrics["loss"] [total_steps]
    params = agent.policy_params(state)

The learner knows nothing about networks or data: ``init(key)`` makes the parameters,
``sample(key, batch_size)`` draws one batch (closing over the data; draw any noise the loss
needs here too), ``nll(params, batch)`` is the batch's mean negative log-likelihood (or any
loss). Build the agent inside ``jax.vmap`` to train on per-seed data. One ``learn`` is one
gradient step, and so is one ``update`` (one metrics line: its loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from agents.core import Agent, Policy
from agents.hparams import require_fields, static, sweepable

__all__ = ["BCConfig", "BCState", "make_bc"]

Params = Any
Batch = Any


@struct.dataclass
class BCConfig:
    """The training loop (static) and optimiser settings (vmappable) of behaviour cloning."""

    total_steps: int = static(2_000)  # gradient steps
    batch_size: int = static(32)  # samples per gradient step (what a sample is: ``sample``'s)
    lr: float = sweepable(1e-3)
    max_grad_norm: float = sweepable(1.0)

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        require_fields(
            self,
            {
                "total_steps": (lambda v: v >= 1, ">= 1"),
                "batch_size": (lambda v: v >= 1, ">= 1"),
                "lr": (lambda v: v > 0, "> 0"),
                "max_grad_norm": (lambda v: v > 0, "> 0"),
            },
        )


class BCState(NamedTuple):
    """What one behaviour-cloning run carries from one gradient step to the next."""

    params: Params
    opt_state: Any
    key: jax.Array  # batch keys: fold_in(key, step)
    step: jax.Array  # int32: gradient steps taken


def make_bc(
    config: BCConfig,
    policy: Policy,
    init: Callable[[jax.Array], Params],
    sample: Callable[[jax.Array, int], Batch],
    nll: Callable[[Params, Batch], jax.Array],
) -> Agent:
    """Behaviour cloning of ``policy`` (whose ``act`` takes the parameters ``init`` makes).

    ``init(key) -> params``; ``sample(key, config.batch_size) -> batch``;
    ``nll(params, batch) -> loss []``, minimised by clipped Adam.
    """
    config.validate()
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.lr))

    def init_state(key: jax.Array) -> BCState:
        key_init, key_train = jax.random.split(key)
        params = init(key_init)
        return BCState(params, tx.init(params), key_train, jnp.int32(0))

    def learn(state: BCState) -> tuple[BCState, dict[str, jax.Array]]:
        batch = sample(jax.random.fold_in(state.key, state.step), config.batch_size)
        loss, grads = jax.value_and_grad(nll)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return BCState(params, opt_state, state.key, state.step + 1), {"loss": loss}

    return Agent(
        policy,
        init_state,
        learn,
        learn,
        lambda state: state.params,
        num_updates=config.total_steps,
        steps_per_update=1,
        step_unit="gradient steps",
    )
