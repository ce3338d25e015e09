"""Composing a library's skills for a new task (PSEC) from a few demonstrations of it.

    agent = make_composition(config, library, ["backward", "jump"], demos, env, env_params)
    state, metrics = jax.jit(agent.train)(key)          # only the mixing weights train
    policy, params = agent.policy, agent.policy_params(state)

``mix`` picks what trains and where the skills meet (``agents.diffusion_policy``):

- ``"context"`` (PSEC): alpha(s) (``ContextAlpha``, an MLP(256, 256) with linear outputs
  starting at the uniform mix) weighs each skill's LoRA delta inside every layer, per state;
- ``"param"``: one weight per skill in parameter space, the same in every state (PSEC without
  the context-aware network);
- ``"noise"`` (NSEC): one weight per skill on its noise prediction (a Gaussian model: on its mean
  and log-std);
- ``"action"`` (ASEC): one weight per skill on its sampled action.

The first three train on the model's loss (diffusion, or the Gaussian's likelihood) of the
demonstrations through the composed model, the last on the squared error of the mixed action;
the base and every skill stay frozen. The
reference adds a regulariser hard-wired to two skills (mean alpha towards fixed targets); it is
left out, and the uniform start plays its role for any number of skills.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from agents import offline
from agents.core import Agent
from agents.diffusion_policy import (
    MIXES,
    ContextAlpha,
    DiffusionBCState,
    make_model,
    net_fn,
    prepare_in_units,
    sample_actions,
)
from agents.hparams import require, require_fields, static, sweepable
from agents.replay import Transition
from skills.library import SkillLibrary

__all__ = ["ComposeConfig", "make_composition"]


@struct.dataclass
class ComposeConfig:
    """Composition settings (reference: about 1k steps at batch 512)."""

    total_steps: int = static(1_000)  # gradient steps
    eval_every: int = static(500)
    eval_episodes: int = static(5)
    batch_size: int = static(512)
    lr: float = sweepable(1e-3)

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.eval_every

    def validate(self) -> None:
        for name in ("total_steps", "eval_every", "batch_size"):
            require(getattr(self, name) >= 1, f"ComposeConfig.{name} must be >= 1")
        require(
            self.total_steps % self.eval_every == 0,
            f"ComposeConfig.total_steps={self.total_steps} must be a multiple of eval_every",
        )
        require_fields(self, {"lr": (lambda v: v > 0, "> 0")})


def make_composition(
    config: ComposeConfig,
    library: SkillLibrary,
    names: Sequence[str],
    transitions: Transition,
    env: Any,
    env_params: Any,
    mix: str = "context",
    ref_scores: tuple[float, float] | None = None,
) -> Agent:
    """The mixing weights of skills ``names`` trained on ``transitions`` [N] (see the module
    docstring); the Agent's policy is ``library.policy(names, mix, ...)``."""
    config.validate()
    require(mix in MIXES, f"mix={mix!r} must be one of {MIXES}")
    policy = library.policy_for(mix)
    _, frozen = library.policy(names, "param", jnp.ones(len(names)) / len(names))
    data = prepare_in_units(transitions, env, env_params, library.units)
    dataset, num = data.transitions, data.transitions.reward.shape[0]
    spec, num_skills = library.spec, len(names)
    model = make_model(
        spec.get("model", "diffusion"), dataset.action.shape[1], spec["net"], spec["num_steps"]
    )
    alpha = ContextAlpha(num_skills)
    tx = optax.adam(config.lr)
    full = lambda trained: {
        "net": frozen["net"],
        "adapters": frozen["adapters"],
        **({"alpha": trained} if mix == "context" else {"weights": trained}),
    }

    def init(key: jax.Array) -> DiffusionBCState:
        key, k_init = jax.random.split(key)
        if mix == "context":
            trained = alpha.init(k_init, dataset.obs[:1])
        else:
            trained = jnp.full((num_skills,), 1.0 / num_skills)
        return DiffusionBCState(trained, tx.init(trained), trained, key, jnp.int32(0))

    def loss(trained, obs, action, key):
        params = full(trained)
        if mix != "action":
            return model.loss(net_fn(model.net, params, obs, mix, spec["scale"]), action, key)
        mixed = sample_actions(model, params, obs, key, mix, spec["scale"])  # skills frozen
        return jnp.mean(jnp.square(mixed - action))

    def learn(state: DiffusionBCState) -> tuple[DiffusionBCState, dict]:
        key, k_idx, k_loss = jax.random.split(state.key, 3)
        idx = jax.random.randint(k_idx, (config.batch_size,), 0, num)
        value, grads = jax.value_and_grad(loss)(
            state.params, dataset.obs[idx], dataset.action[idx], k_loss
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return DiffusionBCState(params, opt_state, params, key, state.step + 1), {"loss": value}

    return offline.make_agent(
        config, policy, init, learn, lambda state: full(state.params), env, env_params, ref_scores
    )
