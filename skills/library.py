"""A skill library (PSEC): a frozen diffusion (or Gaussian) base policy and named LoRA skills.

    library = SkillLibrary.create(base_policy.spec, base_params["net"])
    library, metrics = train_skill(library, "backward", transitions, config, env, env_params, key)
    library.save("my_library"); library = SkillLibrary.load("my_library")   # skills one by one
    policy, params = library.policy(["backward", "jump"], mix="param", weights=[0.5, 0.5])
    merged = library.merged("backward")        # base + that skill as one plain network

A skill is one LoRA adapter (``agents.lora``) on every dense layer of the base's noise network,
trained with the (optionally advantage-weighted) diffusion loss while the base stays exactly as
it was (``agents.diffusion_policy.make_diffusion_bc`` with ``rank > 0``). Skills act in the
base's units (its observation normalisation and action bounds). Each saved skill records a
fingerprint of its base, so a skill never loads onto another base silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agents import lora
from agents.checkpoint import load_params, save_params
from agents.core import Agent, Policy, build_policy, check_losses
from agents.diffusion_policy import DiffusionPolicyConfig, make_diffusion_bc
from agents.hparams import require
from agents.replay import Transition

__all__ = [
    "SkillLibrary",
    "composing_policy",
    "fingerprint",
    "learn_skill",
    "skill_agent",
    "train_skill",
]


def fingerprint(params: Any) -> str:
    """A short hash of a parameter tree's layout and values (which base a skill belongs to)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        x = np.asarray(leaf, np.float32)
        h.update(f"{jax.tree_util.keystr(path)}{x.shape}".encode())
        h.update(x.tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class SkillLibrary:
    """A base diffusion policy's spec and noise-network parameters, and named adapters."""

    spec: Mapping[str, Any]  # the base policy's spec (agents.diffusion_policy.diffusion_policy)
    base: Any  # the base noise network's parameters (never changed by a skill)
    skills: Mapping[str, lora.Adapter] = dataclasses.field(default_factory=dict)
    meta: Mapping[str, dict] = dataclasses.field(default_factory=dict)  # per skill, optional

    @classmethod
    def create(cls, spec: Mapping[str, Any], base: Any) -> SkillLibrary:
        """An empty library on the base policy ``spec`` with noise-network params ``base``."""
        require(
            str(spec.get("build", "")).endswith(":diffusion_policy"),
            f"a skill library needs a diffusion policy's spec as its base, got {spec.get('build')}",
        )
        require(bool(lora.dense_kernels(base)), "the base has no dense layer to adapt")
        return cls(dict(spec), base)

    @property
    def names(self) -> list[str]:
        return list(self.skills)

    @property
    def units(self) -> dict[str, list[float]]:
        return dict(self.spec["units"])

    def add(self, name: str, adapter: lora.Adapter, meta: Mapping[str, Any]) -> SkillLibrary:
        """The library with skill ``name`` (its shapes checked against the base)."""
        require(bool(name) and "/" not in name, f"skill name {name!r} must be non-empty, no '/'")
        require(name not in self.skills, f"skill {name!r} exists; remove it first or rename")
        lora.check_adapter(self.base, adapter, f"skill {name!r}")
        meta = {**meta, "rank": lora.rank_of(adapter)}
        return dataclasses.replace(
            self, skills={**self.skills, name: adapter}, meta={**self.meta, name: meta}
        )

    def remove(self, name: str) -> SkillLibrary:
        """The library without skill ``name``."""
        self._require(name)
        keep = lambda d: {k: v for k, v in d.items() if k != name}
        return dataclasses.replace(self, skills=keep(self.skills), meta=keep(self.meta))

    def merged(self, name: str, weight: float = 1.0) -> Any:
        """The base network with ``weight`` x skill ``name`` merged into its kernels."""
        self._require(name)
        return lora.merge(self.base, self.skills[name], self.spec["scale"], weight)

    def policy(
        self,
        names: Sequence[str] | None = None,
        mix: str = "param",
        weights: Any = None,
        alpha: Any = None,
    ) -> tuple[Policy, dict[str, Any]]:
        """(policy, params) of skills ``names`` (default all) composed by ``mix`` (see
        ``agents.diffusion_policy``): ``weights`` [K] for "param", "noise" and "action" (default
        one-hot of a single skill), ``alpha`` (``ContextAlpha`` params) for "context"."""
        names = list(self.names if names is None else names)
        require(len(names) >= 1, "compose at least one skill; the library has " + str(self.names))
        for name in names:
            self._require(name)
        policy = self.policy_for(mix)
        params = {"net": self.base, "adapters": lora.stack([self.skills[n] for n in names])}
        if mix == "context":
            require(alpha is not None, "mix='context' needs alpha (train_composition's)")
            num = np.shape(alpha["params"]["Dense_0"]["kernel"])[-1]  # ContextAlpha's output
            require(
                num == len(names),
                f"alpha outputs {num} weights but {len(names)} skills were given "
                f"({names}); train the composition on these skills",
            )
            return policy, {**params, "alpha": alpha}
        if weights is None:
            require(len(names) == 1, f"give weights for the {len(names)} skills {names}")
            weights = [1.0]
        weights = jnp.asarray(weights, jnp.float32)
        require(
            weights.shape == (len(names),),
            f"weights have shape {weights.shape}, expected one per skill ({len(names)}: {names})",
        )
        return policy, {**params, "weights": weights}

    def policy_for(self, mix: str) -> Policy:
        """The policy that composes skills by ``mix`` (its params: ``policy``'s)."""
        return composing_policy(self.spec, mix)

    def save(self, directory: str | Path) -> None:
        """``directory/base`` and one ``directory/skills/<name>`` per skill (orbax + JSON)."""
        directory = Path(directory)
        if not (directory / "base").exists():
            save_params(directory / "base", self.base, {"spec": dict(self.spec)})
        stored = directory / "skills"
        for name in set(_saved(directory)) - set(self.skills):
            shutil.rmtree(stored / name)
        base = fingerprint(self.base)
        for name, adapter in self.skills.items():
            if not (stored / name).exists():
                save_params(stored / name, adapter, {**self.meta.get(name, {}), "base": base})

    @classmethod
    def load(cls, directory: str | Path, skills: Sequence[str] | None = None) -> SkillLibrary:
        """The library saved in ``directory`` (only ``skills``, if given); no trainer needed."""
        directory = Path(directory)
        base, meta = load_params(directory / "base")
        library = cls.create(meta["spec"], base)
        for name in _saved(directory) if skills is None else skills:
            library = library.load_skill(directory / "skills" / name, name)
        return library

    def load_skill(self, directory: str | Path, name: str | None = None) -> SkillLibrary:
        """The library with the skill saved in ``directory`` (saved on this same base)."""
        adapter, meta = load_params(directory)
        name = name or Path(directory).name
        require(
            meta.get("base") == fingerprint(self.base),
            f"skill {name!r} in {directory} was trained on another base policy (fingerprint "
            f"{meta.get('base')}, this base {fingerprint(self.base)}); load it with its own base "
            "or retrain it on this one",
        )
        return self.add(name, adapter, {k: v for k, v in meta.items() if k not in ("rank", "base")})

    def _require(self, name: str) -> None:
        require(name in self.skills, f"no skill {name!r} in the library; it has {self.names}")


def composing_policy(spec: Mapping[str, Any], mix: str) -> Policy:
    """The policy that composes skills by ``mix`` on a base policy of ``spec`` (its params:
    ``SkillLibrary.policy``'s; stacked over seeds, a vmapped study's)."""
    return build_policy({**spec, "mix": mix, "num_candidates": 1, "critic_hidden": []})


def _saved(directory: Path) -> list[str]:
    stored = directory / "skills"
    return sorted(p.name for p in stored.iterdir() if p.is_dir()) if stored.exists() else []


def skill_agent(
    library: SkillLibrary,
    name: str,
    transitions: Transition,
    config: DiffusionPolicyConfig,
    env: Any,
    env_params: Any,
    weights: Any = None,
) -> Agent:
    """The learner of skill ``name``: a LoRA adapter of ``config.rank`` on the library's frozen
    base, in its units, on ``transitions`` [N] (per-transition loss ``weights``: e.g. advantage
    weights; default plain BC). Its ``policy_params(state)["adapters"]`` hold the skill."""
    try:
        require(config.rank >= 1, f"config.rank={config.rank} must be >= 1 for a skill")
        model, scale = library.spec.get("model", "diffusion"), library.spec["scale"]
        require(
            config.model == model and config.lora_scale == scale,
            f"the library's base is a {model!r} model composing at scale {scale}; the skill's "
            f"config has model={config.model!r}, lora_scale={config.lora_scale}: pass "
            f"config.replace(model={model!r}, lora_scale={scale})",
        )
        lora.check_adapter(
            library.base, lora.init_adapter(jax.random.key(0), library.base, config.rank)
        )
        return make_diffusion_bc(
            config,
            transitions,
            env,
            env_params,
            base=library.base,
            units=library.units,
            weights=weights,
        )
    except ValueError as err:
        raise ValueError(f"skill {name!r}: {err}") from err


def learn_skill(
    spec: Mapping[str, Any],
    base: Any,
    name: str,
    transitions: Transition,
    config: DiffusionPolicyConfig,
    env: Any,
    env_params: Any,
    key: jax.Array,
    weights: Any = None,
) -> tuple[lora.Adapter, dict[str, jax.Array]]:
    """Skill ``name`` trained (``skill_agent``) from ``key`` on the frozen noise network
    ``base`` of a base policy of ``spec``: (its adapter as a library of one [1, ...], the
    training metrics). Pure: a study vmaps it over its seeds' bases and keys."""
    library = SkillLibrary(dict(spec), base)
    agent = skill_agent(library, name, transitions, config, env, env_params, weights)
    state, metrics = agent.train(key)
    return agent.policy_params(state)["adapters"], metrics


def train_skill(
    library: SkillLibrary,
    name: str,
    transitions: Transition,
    config: DiffusionPolicyConfig,
    env: Any,
    env_params: Any,
    key: jax.Array,
    weights: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[SkillLibrary, dict[str, np.ndarray]]:
    """The library with skill ``name`` trained (``skill_agent``) for ``config.total_steps``
    gradient steps from ``key``, its ``metadata`` (e.g. the data's name) stored with it; and
    the training metrics."""
    learn = lambda k: learn_skill(
        library.spec, library.base, name, transitions, config, env, env_params, k, weights
    )
    adapters, metrics = jax.jit(learn)(key)
    check_losses(metrics, f"skill {name!r}")
    adapter = jax.tree.map(lambda x: x[0], adapters)
    meta = {
        "transitions": int(np.shape(transitions.reward)[0]),
        "loss": "bc" if weights is None else "weighted",
        "gradient_steps": config.total_steps,
        "final_loss": float(np.asarray(metrics["loss"])[-1]),
        **(metadata or {}),
    }
    return library.add(name, adapter, meta), jax.device_get(metrics)
