"""The agent contract: one ``Policy`` shape, one ``Agent`` bundle, one policy export for all.

    agent = make_ppo(config, env, env_params)       # every learner returns an Agent
    state = agent.init(key)
    state, metrics = agent.learn(state)             # one gradient step (PPO: rollout + epochs)
    state, metrics = agent.update(state)            # learns for one metrics line
    state, metrics = jax.jit(agent.train)(key)      # agent.num_updates updates; vmap for seeds
    params = agent.policy_params(state)
    carry = agent.policy.initial_carry(num_envs)
    carry, action = agent.policy.act(params, carry, obs, key, deterministic=True)
    export_policy(directory, agent.policy, params, {"env": "HalfCheetah"})
    policy, params, metadata = load_policy(directory)  # no trainer, env or dataset needed

A policy acts in the env's own units: observation normalisation and action bounds live inside
it. Its ``carry`` is its memory (``()`` for memoryless policies); the caller starts it with
``initial_carry`` and restarts it at episode ends with ``reset_carry``. ``Policy.spec`` is a
JSON description (``"build": "module:function"`` plus that function's keyword arguments) from
which ``build_policy`` rebuilds the same policy, which is how ``load_policy`` works without the
trainer: every policy builder records itself with ``policy_spec``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from agents.checkpoint import load_params, save_params

__all__ = [
    "Agent",
    "DivergenceError",
    "Policy",
    "batched",
    "build_policy",
    "check_losses",
    "diverging",
    "export_policy",
    "load_policy",
    "policy_spec",
    "reset_carry",
    "seed_sharding",
]

PyTree = Any
Params = Any
Carry = Any
Metrics = dict[str, jax.Array]
# act(params, carry, obs [B, ...], key, deterministic) -> (carry, action [B, ...])
ActFn = Callable[..., tuple[Carry, jax.Array]]


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """Inference for one agent: ``act`` on a batch of observations, in the env's units.

    ``act(params, carry, obs [B, ...], key, deterministic=False) -> (carry, action [B, ...])``;
    ``initial_carry(B)`` is the memory of B fresh episodes (``()`` when there is none); ``spec``
    rebuilds the policy (``build_policy``).
    """

    act: ActFn
    initial_carry: Callable[[int], Carry]
    spec: Mapping[str, Any]


def _jsonable(value: Any) -> Any:
    """``value`` with arrays and tuples turned into (nested) lists and numpy scalars into Python."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        return np.asarray(value).tolist()
    return value


def policy_spec(build: Callable[..., Policy], **kwargs: Any) -> dict[str, Any]:
    """The ``spec`` of the policy ``build(**kwargs)`` returns: JSON only (arrays become lists)."""
    return {"build": f"{build.__module__}:{build.__qualname__}", **_jsonable(kwargs)}


def build_policy(spec: Mapping[str, Any]) -> Policy:
    """The policy a ``spec`` describes (its builder is imported by name)."""
    spec = dict(spec)
    target = spec.pop("build", None)
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(
            f"a policy spec needs 'build': 'module:function', got {target!r}; specs come from "
            "Policy.spec (agents.core.policy_spec)"
        )
    module, name = target.split(":", 1)
    try:
        build = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"cannot rebuild the policy: {target} does not exist in this codebase ({err}); "
            "load it with the code version that exported it"
        ) from err
    return build(**spec)


def no_carry(batch_size: int) -> tuple:
    """The (empty) memory of a memoryless policy."""
    return ()


def reset_carry(policy: Policy, carry: Carry, done: jax.Array) -> Carry:
    """``carry`` [B, ...] with the entries where ``done`` [B] is set back to the initial memory."""
    fresh = policy.initial_carry(done.shape[0])
    pick = lambda new, old: jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), new, old)
    return jax.tree.map(pick, fresh, carry)


class Agent:
    """What every learner returns; see the module docstring.

    ``learn`` is one gradient step (PPO: one rollout and its epochs; SAC: one env step and its
    ``utd`` gradient steps); ``update`` is ``learn`` repeated for one metrics line (offline
    learners: ``eval_every`` steps and an evaluation); ``train`` runs ``num_updates`` updates
    from ``init(key)``. ``steps_per_update`` counts ``step_unit``s (env or gradient steps);
    ``steps_before`` those that ``init`` takes (SAC's uniformly random warm-up).
    """

    def __init__(
        self,
        policy: Policy,
        init: Callable[[jax.Array], PyTree],
        learn: Callable[[PyTree], tuple[PyTree, Metrics]],
        update: Callable[[PyTree], tuple[PyTree, Metrics]],
        policy_params: Callable[[PyTree], Params],
        num_updates: int,
        steps_per_update: int,
        step_unit: str = "env steps",
        train: Callable[[jax.Array], tuple[PyTree, Metrics]] | None = None,
        steps_before: int = 0,
    ):
        self.policy = policy
        self.init = init
        self.learn = learn
        self.update = update
        self.policy_params = policy_params
        self.num_updates = int(num_updates)
        self.steps_per_update = int(steps_per_update)
        self.step_unit = step_unit
        self.train = self._train if train is None else train
        self.steps_before = int(steps_before)

    def steps_at(self, updates: Any) -> np.ndarray:
        """``step_unit``s taken once ``updates`` updates are done, ``init``'s included."""
        return self.steps_before + self.steps_per_update * np.asarray(updates)

    def _train(self, key: jax.Array) -> tuple[PyTree, Metrics]:
        """A whole run: ``num_updates`` updates from ``init(key)``; metrics [num_updates]."""
        return jax.lax.scan(lambda s, _: self.update(s), self.init(key), None, self.num_updates)


class DivergenceError(RuntimeError):
    """Training produced non-finite or exploding losses or parameters; the run stopped."""


def _losses(metrics: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{name: value [n, batch]} (float64) of every metric called ``*loss*`` in ``metrics``
    ({name: [n, ...]}; nested dicts searched)."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            out |= _losses(value)
        elif "loss" in name:
            value = np.asarray(value, np.float64)
            out[name] = value.reshape(len(value), -1) if value.ndim else value.reshape(1, 1)
    return out


def diverging(metrics: Mapping[str, Any], limit: float = 1e12) -> dict[str, np.ndarray]:
    """{name: bad [n, batch]}: which entries of each ``*loss*`` metric in ``metrics`` are
    non-finite or past ``limit`` in size."""
    return {k: ~np.isfinite(v) | (np.abs(v) > limit) for k, v in _losses(metrics).items()}


def check_losses(
    metrics: Mapping[str, Any], what: str = "training", limit: float = 1e12, start: int = 0,
    fix: str = "Lower the learning rate(s), check the reward scale and the data, and train again.",
) -> None:  # fmt: skip
    """Raise ``DivergenceError`` naming the first metric called ``*loss*`` in ``metrics``
    ({name: [n, ...]}; nested dicts searched) that is non-finite or past ``limit`` in size: its
    update (counted from ``start``), the batch indices (seeds or runs) it hit, and ``fix``."""
    values = _losses(metrics)
    for name, bad in diverging(values, limit).items():
        value = values[name]
        if bad.any():
            step, _ = np.argwhere(bad)[0]
            which = np.flatnonzero(bad[step]).tolist()
            raise DivergenceError(
                f"{what} diverged: {name} = {value[step, which[0]]:.3g} at update "
                f"{start + step} (seed or run index {which} of the batch; limit +-{limit:g}). "
                + fix
            )


def seed_sharding(num_seeds: int) -> NamedSharding:
    """The leading (seed) axis of every array split over all devices of all hosts: a ``Mesh``
    of ``jax.devices()`` with one axis, ``"seeds"``. A count of seeds the devices do not divide
    raises a ValueError naming the fix."""
    devices = jax.devices()
    if num_seeds % len(devices):
        raise ValueError(
            f"{num_seeds} seeds do not divide over the {len(devices)} {devices[0].platform} "
            f"devices: train a multiple of {len(devices)} seeds, or use fewer devices "
            "(CUDA_VISIBLE_DEVICES, or XLA_FLAGS=--xla_force_host_platform_device_count on CPU)"
        )
    mesh = jax.make_mesh((len(devices),), ("seeds",), (AxisType.Auto,))  # XLA partitions
    return NamedSharding(mesh, PartitionSpec("seeds"))


def batched(make: Callable[[PyTree], Agent], settings: PyTree) -> Agent:
    """One Agent that trains ``make(s)`` for every setting ``s`` in ``settings`` (a pytree with
    a leading [B] axis: stacked configs or env params, e.g. task variants, any of their
    sweepable leaves, optimiser hyperparameters included) in one program; its states, metrics
    and policy params gain that leading [B] axis.

    A state's static parts (a ``TrainState``'s optimiser, built from a learning rate) are made
    per setting inside the program: between calls the state carries the first setting's
    (one fixed structure, so chunks reuse their compiled program), and every ``learn``,
    ``update`` and ``policy_params`` swaps in its own setting's before running.
    """
    size = jax.tree.leaves(settings)[0].shape[0]
    first = make(jax.tree.map(lambda x: x[0], settings))
    canonical = jax.tree.structure(jax.eval_shape(first.init, jax.random.key(0)))
    fixed = lambda tree: jax.tree.unflatten(canonical, jax.tree.leaves(tree))

    def each(f, returns_state=True):
        def one(c, s):
            agent = make(c)
            # this setting's static parts, made in this trace (the unused init is compiled away)
            structure = jax.tree.structure(agent.init(jax.random.key(0)))
            out = f(agent)(jax.tree.unflatten(structure, jax.tree.leaves(s)))
            return (fixed(out[0]), out[1]) if returns_state else out

        return lambda state: jax.vmap(one)(settings, state)

    keys = lambda key: jax.random.split(key, size)
    train = lambda key: jax.vmap(lambda c, k: make(c).train(k))(settings, keys(key))
    return Agent(
        first.policy,
        lambda key: jax.vmap(lambda c, k: fixed(make(c).init(k)))(settings, keys(key)),
        each(lambda agent: agent.learn),
        each(lambda agent: agent.update),
        each(lambda agent: agent.policy_params, returns_state=False),
        first.num_updates,
        first.steps_per_update,
        first.step_unit,
        train,
        first.steps_before,
    )


def export_policy(
    directory: str | os.PathLike,
    policy: Policy,
    params: Params,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save ``params`` (one agent's, not a batch) with ``policy.spec`` and JSON ``metadata``."""
    save_params(directory, params, {"policy": dict(policy.spec), **_jsonable(dict(metadata or {}))})


def load_policy(directory: str | os.PathLike) -> tuple[Policy, Params, dict[str, Any]]:
    """``(policy, params, metadata)`` from ``export_policy``: act with ``policy.act``."""
    params, metadata = load_params(directory)
    if "policy" not in metadata:
        raise ValueError(
            f"{directory} holds parameters without a policy spec; export policies with "
            "agents.core.export_policy"
        )
    return build_policy(metadata["policy"]), params, metadata
