"""Diffusion policies: IDQL-style DDPM behaviour cloning, with LoRA skills mixed into the network.

    agent = make_diffusion_bc(config, transitions, env, env_params)      # an agents.core.Agent
    state, metrics = jax.jit(agent.train)(key)
    carry, action = agent.policy.act(agent.policy_params(state), (), env_obs, key)

    # a LoRA skill on a frozen base: only the adapter trains (config.rank > 0)
    skill = make_diffusion_bc(config.replace(rank=8), skill_data, env, env_params,
                              base=base_net_params, units=base_units, weights=adv_weights)

The model is ``agents.diffusion``'s DDPM (IDQL's form: T = 5 steps, VP schedule,
eps-prediction, actions clipped to [-1, 1] at every step) with its LayerNorm residual noise
network, conditioned on the normalised observation. Training is (optionally per-transition
``weights``, e.g. IQL advantage weights ``clip(exp(beta (Q - V)), 0, 100)``) eps-prediction
regression with AdamW, a cosine learning rate and an EMA of the weights (the policy's). With
``rank > 0`` the network is frozen at ``base`` and one LoRA adapter (``agents.lora``) trains;
``rank = 0`` with ``base`` is full fine-tuning.

``model="gaussian"`` swaps the diffusion model for a Gaussian policy on the same residual
network (``GaussianNet``: mean and log-std, trained by weighted negative log-likelihood, acting
with the mean when ``deterministic``): PSEC's "MLP instead of diffusion" ablation. Everything
else (LoRA skills, every composition) works on either model.

``diffusion_policy`` acts in the env's units and composes K LoRA skills on one base (``mix``):
``"param"`` (fixed weights in parameter space), ``"context"`` (weights alpha(s) from a small
network, PSEC's context-aware composition), ``"noise"`` (a weighted sum of the skills' noise
predictions) or ``"action"`` (a weighted sum of the skills' sampled actions, all sampled from
the same noise). With a critic
(``num_candidates > 1``) it draws that many actions per state and takes the one of highest Q,
as IDQL does. Sampling is the policy: it acts the same with ``deterministic`` either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from agents import lora, offline
from agents.core import Agent, Policy, no_carry, policy_spec
from agents.diffusion import NoiseNet, ddpm_loss, ddpm_sample, vp_betas
from agents.hparams import require, require_fields, static, sweepable
from agents.networks import MLP, CriticEnsemble, ResidualMLP
from agents.replay import Transition
from envs.wrappers import Normalizer

__all__ = [
    "MIXES",
    "ContextAlpha",
    "DiffusionBCState",
    "DiffusionPolicyConfig",
    "GaussianNet",
    "Model",
    "diffusion_policy",
    "make_diffusion_bc",
    "make_model",
    "net_fn",
    "prepare_in_units",
    "reference_config",
]

MIXES = ("param", "context", "noise", "action")
MODELS = ("diffusion", "gaussian")


@struct.dataclass
class DiffusionPolicyConfig:
    """Diffusion-policy settings (the reference's IDQL/PSEC values unless noted)."""

    total_steps: int = static(20_000)  # gradient steps (reference: 1M base, <= 50k per skill)
    eval_every: int = static(5_000)  # gradient steps per `update` (one evaluation each)
    eval_episodes: int = static(5)  # 0: no evaluation
    batch_size: int = static(256)  # reference: 2048 (base), 512 (skills)
    num_steps: int = static(5)  # diffusion steps T
    width: int = static(256)
    num_blocks: int = static(3)
    time_dim: int = static(64)  # learnable Fourier features of the step
    dropout: float = static(0.1)
    rank: int = static(0)  # 0: train the network; > 0: a LoRA adapter of this rank on `base`
    model: str = static("diffusion")  # or "gaussian": the same network as a Gaussian policy
    normalize_obs: bool = static(True)
    lora_scale: float = static(16.0)  # the adapter's scale s (raw, not alpha / rank; exported)
    lr: float = sweepable(3e-4)
    weight_decay: float = sweepable(1e-4)  # AdamW
    ema_tau: float = sweepable(0.005)  # reference: 0.001 over 1M steps

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.eval_every

    @property
    def net(self) -> dict[str, Any]:
        """The noise network's settings, as ``diffusion_policy`` takes them."""
        keys = ("width", "num_blocks", "time_dim", "dropout")
        return {k: getattr(self, k) for k in keys}

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        for name in ("total_steps", "eval_every", "batch_size", "num_steps", "width"):
            require(getattr(self, name) >= 1, f"DiffusionPolicyConfig.{name} must be >= 1")
        require(self.eval_episodes >= 0, "DiffusionPolicyConfig.eval_episodes must be >= 0")
        require(self.rank >= 0, f"DiffusionPolicyConfig.rank={self.rank} must be >= 0")
        require(
            self.model in MODELS,
            f"DiffusionPolicyConfig.model={self.model!r} must be one of {MODELS}",
        )
        require(
            self.total_steps % self.eval_every == 0,
            f"DiffusionPolicyConfig.total_steps={self.total_steps} must be a multiple of "
            f"eval_every={self.eval_every}",
        )
        require(
            self.time_dim >= 2 and self.time_dim % 2 == 0,
            f"DiffusionPolicyConfig.time_dim={self.time_dim} must be even (cos and sin)",
        )
        require(0 <= self.dropout < 1, f"DiffusionPolicyConfig.dropout={self.dropout}")
        checks = {
            "lora_scale": (lambda v: v > 0, "> 0"),
            "lr": (lambda v: v > 0, "> 0"),
            "weight_decay": (lambda v: v >= 0, ">= 0"),
            "ema_tau": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
        }
        require_fields(self, checks)


def reference_config(rank: int = 0, **changes: Any) -> DiffusionPolicyConfig:
    """PSEC's published settings (the paper presets): a base (``rank`` 0) pretrained for 1M
    steps at batch 2048 with EMA 0.001, or a LoRA skill of ``rank`` (scale 16) trained for
    200k steps at batch 512 (the dynamics-shift launcher's); ``changes`` override fields."""
    if rank == 0:
        fields = {"total_steps": 1_000_000, "eval_every": 50_000, "batch_size": 2048,
                  "ema_tau": 0.001}  # fmt: skip
    else:
        fields = {"rank": rank, "lora_scale": 16.0, "total_steps": 200_000,
                  "eval_every": 50_000, "batch_size": 512}  # fmt: skip
    return DiffusionPolicyConfig(**{**fields, **changes})


class ContextAlpha(nn.Module):
    """PSEC's context-aware weights: normalised obs [..., obs_dim] -> alpha [..., num_skills].

    An MLP with linear (unbounded) outputs, starting at the uniform mix 1 / num_skills."""

    num_skills: int
    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        uniform = nn.initializers.constant(1.0 / self.num_skills)
        out = nn.Dense(self.num_skills, kernel_init=nn.initializers.zeros, bias_init=uniform)
        return out(MLP(self.hidden, "relu")(obs))


class GaussianNet(NoiseNet):
    """A Gaussian policy on the noise network's residual MLP: obs [B, C] -> (mean [B, out_dim],
    log-std [B, out_dim] in [-5, 2]). NoiseNet's settings; ``time_dim`` is unused."""

    @nn.compact
    def __call__(  # type: ignore[override]
        self, cond: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        net = ResidualMLP(
            self.width, self.num_blocks, 2 * self.out_dim, "mish", True, 4, self.dropout, False
        )
        mean, log_std = jnp.split(net(cond, train), 2, axis=-1)
        return mean, jnp.clip(log_std, -5.0, 2.0)


class Model(NamedTuple):
    """One policy model (diffusion or Gaussian) as the learners and policies use it.

    ``apply`` below is the (possibly LoRA-composed) network with its observation bound:
    ``apply(x_t, t) -> eps`` (diffusion) or ``apply() -> (mean, log_std)`` (Gaussian)."""

    net: nn.Module
    init: Callable[[jax.Array, jax.Array], Any]  # (key, obs [1, C]) -> params
    loss: Callable[..., jax.Array]  # (apply, action [B, A], key, weights [B] | None) -> []
    sample: Callable[..., jax.Array]  # (apply, key, (B, A), deterministic) -> [B, A] in [-1, 1]


def make_model(kind: str, act_dim: int, net: dict[str, Any], num_steps: int) -> Model:
    """The ``kind`` ("diffusion": IDQL's DDPM of ``num_steps``; "gaussian") model over actions
    [act_dim], its network of settings ``net`` (``DiffusionPolicyConfig.net``)."""
    require(kind in MODELS, f"model={kind!r} must be one of {MODELS}")
    if kind == "diffusion":
        betas = vp_betas(num_steps)
        noise_net = NoiseNet(act_dim, **net)
        t0 = jnp.zeros((1,), jnp.int32)
        return Model(
            noise_net,
            lambda key, obs: noise_net.init(key, jnp.zeros((1, act_dim)), t0, obs),
            lambda apply, action, key, w=None: ddpm_loss(apply, action, key, betas, w),
            lambda apply, key, shape, deterministic=False: ddpm_sample(apply, key, shape, betas),
        )

    gaussian = GaussianNet(act_dim, **net)

    def loss(apply, action, key, weights=None):
        mean, log_std = apply()
        nll = jnp.mean(0.5 * jnp.square((action - mean) * jnp.exp(-log_std)) + log_std, -1)
        return jnp.mean(nll if weights is None else weights * nll)

    def sample(apply, key, shape, deterministic=False):
        mean, log_std = apply()
        noise = jax.random.normal(key, shape) * (not deterministic)
        return jnp.clip(mean + jnp.exp(log_std) * noise, -1.0, 1.0)

    return Model(gaussian, gaussian.init, loss, sample)


def net_fn(
    net: nn.Module,
    params: dict[str, Any],
    obs: jax.Array,
    mix: str,
    scale: float,
    skill: int | None = None,
    train_key: jax.Array | None = None,
) -> Callable[..., Any]:
    """The model's ``apply(*inputs)`` (see ``Model``) of the network in ``params`` conditioned
    on ``obs`` [B, obs_dim]: the base alone without ``params["adapters"]``, else the adapters
    mixed by ``mix`` (``skill``: that adapter alone). ``train_key`` turns dropout on."""
    rngs = {} if train_key is None else {"rngs": {"dropout": train_key}}
    train = train_key is not None
    if "adapters" not in params:
        return lambda *inputs: net.apply(params["net"], *inputs, obs, train, **rngs)
    adapters, num_skills = params["adapters"], lora.num_adapters(params["adapters"])
    if skill is not None:  # that adapter alone: K skills mixed cost K passes, not K^2 deltas
        adapters = jax.tree.map(lambda a: a[skill][None], adapters)
        weights = jnp.ones((1,))
    elif mix == "context":
        weights = ContextAlpha(num_skills).apply(params["alpha"], obs)  # [B, K]
    else:
        weights = params["weights"]  # [K]
    if mix == "noise" and skill is None:  # mix the skills' outputs (noise, or mean and log-std)
        one = lambda k, inputs: net_fn(net, params, obs, mix, scale, k, train_key)(*inputs)
        return lambda *inputs: jax.tree.map(
            lambda y: jnp.einsum("k,k...->...", weights, y),
            jax.vmap(one, in_axes=(0, None))(jnp.arange(num_skills), inputs),
        )
    return lambda *inputs: lora.apply_lora(
        net.apply, params["net"], adapters, weights, scale, *inputs, obs, train, **rngs
    )


def sample_actions(
    model: Model,
    params: dict[str, Any],
    obs: jax.Array,
    key: jax.Array,
    mix: str,
    scale: float,
    deterministic: bool = False,
) -> jax.Array:
    """Actions [B, A] in [-1, 1] of ``model`` in ``params`` (skills mixed by ``mix``) at
    normalised ``obs`` [B, obs_dim]; action-space mixing samples every skill from one noise."""
    shape = (obs.shape[0], model.net.out_dim)
    if mix != "action" or "adapters" not in params:
        return model.sample(net_fn(model.net, params, obs, mix, scale), key, shape, deterministic)
    one = lambda k: model.sample(
        net_fn(model.net, params, obs, mix, scale, k), key, shape, deterministic
    )
    actions = jax.vmap(one)(jnp.arange(lora.num_adapters(params["adapters"])))  # [K, B, A]
    return jnp.clip(jnp.einsum("k,kba->ba", params["weights"], actions), -1.0, 1.0)


def diffusion_policy(
    units: dict[str, list[float]],
    net: dict[str, Any],
    num_steps: int,
    num_candidates: int = 1,
    critic_hidden: tuple[int, ...] = (),
    mix: str = "param",
    scale: float = 16.0,
    model: str = "diffusion",
) -> Policy:
    """A diffusion (or ``model="gaussian"``) policy in the env's units (``units``:
    ``OfflineData.policy_units()``).

    ``params``: ``{"net": the network}``, plus ``"critic"`` (an IQL ``CriticEnsemble`` of
    ``critic_hidden``) when ``num_candidates > 1``, plus for skills ``"adapters"`` (stacked [K])
    and ``"weights"`` [K] (``mix`` "param", "noise", "action") or ``"alpha"`` (``"context"``).
    """
    require(mix in MIXES, f"mix={mix!r} must be one of {MIXES}")
    require(num_candidates >= 1, f"num_candidates={num_candidates} must be >= 1")
    require(
        num_candidates == 1 or len(critic_hidden) > 0,
        "choosing among num_candidates > 1 actions needs a critic: pass critic_hidden",
    )
    normalize, to_env = offline.env_units(**units)
    act_dim = len(units["action_low"])
    the_model = make_model(model, act_dim, net, num_steps)
    spec = policy_spec(
        diffusion_policy,
        units=units,
        net=net,
        num_steps=num_steps,
        num_candidates=num_candidates,
        critic_hidden=tuple(critic_hidden),
        mix=mix,
        scale=scale,
        model=model,
    )

    def act(params, carry, env_obs, key, deterministic=False):
        obs = normalize(env_obs)
        sample = lambda obs: sample_actions(the_model, params, obs, key, mix, scale, deterministic)
        if num_candidates == 1:
            return carry, to_env(sample(obs))
        many = jnp.repeat(obs, num_candidates, axis=0)  # [B * N, obs_dim]
        actions = sample(many).reshape(obs.shape[0], num_candidates, act_dim)
        q = CriticEnsemble(2, tuple(critic_hidden), "relu").apply(
            params["critic"], many, actions.reshape(-1, act_dim)
        )
        best = jnp.argmax(q.min(0).reshape(obs.shape[0], num_candidates), axis=1)
        return carry, to_env(jnp.take_along_axis(actions, best[:, None, None], 1)[:, 0])

    return Policy(act, no_carry, spec)


def prepare_in_units(
    transitions: Transition,
    env: Any,
    env_params: Any,
    units: dict[str, list[float]] | None = None,
    normalize_obs: bool = True,
) -> offline.OfflineData:
    """``offline.prepare`` (checked, actions in [-1, 1]), observations normalised with
    ``units`` (a policy's) when given, else with the dataset's own statistics."""
    data = offline.prepare(transitions, env, env_params, normalize_obs=normalize_obs and not units)
    if units is None:
        return data
    with jax.ensure_compile_time_eval():
        return _in_units(data, units)


def _in_units(data: offline.OfflineData, units: dict[str, list[float]]) -> offline.OfflineData:
    norm = Normalizer(jnp.asarray(units["obs_mean"]), jnp.asarray(units["obs_std"]))
    require(
        norm.mean.shape == data.obs.mean.shape,
        f"the units are for observations {norm.mean.shape}, the data has {data.obs.mean.shape}",
    )
    scaled = data.transitions._replace(
        obs=norm.normalize(data.transitions.obs), next_obs=norm.normalize(data.transitions.next_obs)
    )
    return data._replace(transitions=scaled, obs=norm)


class DiffusionBCState(NamedTuple):
    """A diffusion policy (or adapter) being trained: weights, optimiser, EMA, key, steps."""

    params: Any  # what trains: the network (rank 0) or one adapter
    opt_state: Any
    ema: Any
    key: jax.Array
    step: jax.Array


def make_diffusion_bc(
    config: DiffusionPolicyConfig,
    transitions: Transition,
    env: Any,
    env_params: Any,
    *,
    base: Any = None,
    units: dict[str, list[float]] | None = None,
    weights: Any = None,
    critic: Any = None,
    critic_hidden: tuple[int, ...] = (),
    num_candidates: int = 1,
    ref_scores: tuple[float, float] | None = None,
) -> Agent:
    """Diffusion behaviour cloning on ``transitions`` [N] (checked against ``env``).

    ``base``: noise-network parameters to start from (full fine-tuning at ``rank = 0``; the
    frozen base of a LoRA adapter at ``rank > 0``, which needs it). ``units``: the observation
    normalisation and action bounds to train and act in (a skill uses its base's; default:
    fitted to ``transitions``). ``weights`` [N]: per-transition loss weights (default 1).
    ``critic`` (an IQL ``CriticEnsemble`` of ``critic_hidden``, trained in the same units) with
    ``num_candidates > 1``: the policy picks the best of that many actions.
    """
    config.validate()
    require(config.rank == 0 or base is not None, "a LoRA adapter (rank > 0) needs its base")
    data = prepare_in_units(transitions, env, env_params, units, config.normalize_obs)
    dataset, act_dim = data.transitions, data.transitions.action.shape[1]
    num = dataset.reward.shape[0]
    if weights is None:
        weights = jnp.ones((num,), jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    require(
        weights.shape == (num,),
        f"weights have shape {weights.shape}; give one per transition ({num})",
    )
    model = make_model(config.model, act_dim, config.net, config.num_steps)
    lora_mode = config.rank > 0
    policy = diffusion_policy(
        data.policy_units(),
        config.net,
        config.num_steps,
        num_candidates,
        critic_hidden,
        scale=config.lora_scale,
        model=config.model,
    )
    lr = optax.cosine_decay_schedule(config.lr, config.total_steps)
    tx = optax.adamw(lr, weight_decay=config.weight_decay)

    def init(key: jax.Array) -> DiffusionBCState:
        key, k_init = jax.random.split(key)
        if base is None:
            params = model.init(k_init, dataset.obs[:1])
        elif lora_mode:
            params = lora.init_adapter(k_init, base, config.rank)
        else:
            params = base
        return DiffusionBCState(params, tx.init(params), params, key, jnp.int32(0))

    def full(trained):  # the policy's params of the trained part
        if not lora_mode:
            return {"net": trained}
        adapters = lora.stack([trained])
        return {"net": base, "adapters": adapters, "weights": jnp.ones((1,))}

    def policy_params(state: DiffusionBCState) -> dict[str, Any]:
        params = full(state.ema)
        return params if critic is None else {**params, "critic": critic}

    def learn(state: DiffusionBCState) -> tuple[DiffusionBCState, dict]:
        key, k_idx, k_loss, k_drop = jax.random.split(state.key, 4)
        idx = jax.random.randint(k_idx, (config.batch_size,), 0, num)
        obs, action, w = dataset.obs[idx], dataset.action[idx], weights[idx]

        def loss(trained):
            apply = net_fn(model.net, full(trained), obs, "param", config.lora_scale, None, k_drop)
            return model.loss(apply, action, k_loss, w)

        value, grads = jax.value_and_grad(loss)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = optax.incremental_update(params, state.ema, config.ema_tau)
        return DiffusionBCState(params, opt_state, ema, key, state.step + 1), {"loss": value}

    return offline.make_agent(
        config, policy, init, learn, policy_params, env, env_params, ref_scores
    )


def num_trainable(config: DiffusionPolicyConfig, obs_dim: int, act_dim: int) -> tuple[int, int]:
    """(parameters a LoRA adapter of ``config.rank`` trains, parameters of the whole network)."""
    model = make_model(config.model, act_dim, config.net, config.num_steps)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, obs_dim)))
    kernels = lora.dense_kernels(shapes)
    adapter = sum(config.rank * (k.shape[0] + k.shape[1]) for k in kernels.values())
    return adapter, int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))
