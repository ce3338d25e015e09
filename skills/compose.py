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
the base and every skill stay frozen.

Where the weights start (``start``): the uniform mix 1 / K, or ``"best"``, one-hot on the skill
whose own model loss on the demonstrations is lowest (the same 4,096 demonstration samples and
noise for every skill). ``anchor`` > 0 adds ``anchor * scale^2 * ||mean_s alpha(s) - start||^2``
(for fixed weights: the weights themselves): the reference's regulariser, which pulls the mean
alpha of its two skills to (scale, 0) in its units (anchor 1 is its strength), generalised to
any number of skills and any start.
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

__all__ = ["STARTS", "ComposeConfig", "fit_losses", "make_composition"]

STARTS = ("uniform", "best")


@struct.dataclass
class ComposeConfig:
    """Composition settings (reference: about 1k steps at batch 512)."""

    total_steps: int = static(1_000)  # gradient steps
    eval_every: int = static(500)
    eval_episodes: int = static(5)
    batch_size: int = static(512)
    lr: float = sweepable(1e-3)
    start: str = static("uniform")  # "uniform" (1 / K each) or "best" (one-hot on a skill)
    anchor: float = static(0.0)  # weight of the pull of the mean weights to the start

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
        require(self.start in STARTS, f"ComposeConfig.start={self.start!r} must be one of {STARTS}")
        require_fields(self, {"lr": (lambda v: v > 0, "> 0"), "anchor": (lambda v: v >= 0, ">= 0")})


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

    if config.start == "best":  # [K]
        fits = fit_losses(library, names, transitions, env, env_params)
        start = jax.nn.one_hot(jnp.argmin(fits), num_skills)
    else:
        start = jnp.full((num_skills,), 1.0 / num_skills)

    def init(key: jax.Array) -> DiffusionBCState:
        key, k_init = jax.random.split(key)
        if mix == "context":  # the output layer starts at ``start`` in every state
            trained = alpha.init(k_init, dataset.obs[:1])
            trained["params"]["Dense_0"]["bias"] = start
        else:
            trained = start
        return DiffusionBCState(trained, tx.init(trained), trained, key, jnp.int32(0))

    def loss(trained, obs, action, key):
        params = full(trained)
        pull = 0.0
        if config.anchor:  # static: no second alpha pass without the anchor
            weights = alpha.apply(trained, obs).mean(0) if mix == "context" else trained  # [K]
            pull = config.anchor * spec["scale"] ** 2 * jnp.sum(jnp.square(weights - start))
        if mix != "action":
            apply = net_fn(model.net, params, obs, mix, spec["scale"])
            return model.loss(apply, action, key) + pull
        mixed = sample_actions(model, params, obs, key, mix, spec["scale"])  # skills frozen
        return jnp.mean(jnp.square(mixed - action)) + pull

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


def fit_losses(
    library: SkillLibrary, names: Sequence[str], transitions: Transition, env: Any, env_params: Any
) -> jax.Array:
    """[K]: how well each skill of ``names`` alone fits ``transitions`` [N]: its own model loss
    on 4,096 of them (the lowest is where ``start="best"`` starts)."""
    _, frozen = library.policy(names, "param", jnp.ones(len(names)) / len(names))
    dataset = prepare_in_units(transitions, env, env_params, library.units).transitions
    spec = library.spec
    model = make_model(
        spec.get("model", "diffusion"), dataset.action.shape[1], spec["net"], spec["num_steps"]
    )
    k_idx, k_loss = jax.random.split(jax.random.key(0))  # the same samples and noise for all
    idx = jax.random.randint(k_idx, (4096,), 0, dataset.reward.shape[0])
    obs, action = dataset.obs[idx], dataset.action[idx]
    one = lambda k: model.loss(
        net_fn(model.net, frozen, obs, "param", spec["scale"], skill=k), action, k_loss
    )
    return jax.lax.map(one, jnp.arange(len(names)))
