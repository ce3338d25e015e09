"""Config helpers: static vs sweepable fields, validation, and stacking configs for ``jax.vmap``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

C = TypeVar("C")


def static(default: Any) -> Any:
    """A config field that fixes shapes or loop lengths (not vmappable)."""
    return struct.field(pytree_node=False, default=default)


def sweepable(default: float) -> Any:
    """A config field that may be a batched array under ``jax.vmap`` (a hyperparameter sweep)."""
    return struct.field(pytree_node=True, default=default)


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``; skipped for traced values."""
    if not condition:
        raise ValueError(message)


def require_fields(config: Any, checks: dict[str, tuple[Callable[[Any], Any], str]]) -> None:
    """Raise a ValueError naming the first field whose value fails its check.

    ``checks`` maps a field name to (predicate over an array, what the value must be); values
    that are traced (inside ``jax.jit``/``vmap``) are skipped, arrays (sweeps) are checked
    element-wise.
    """
    for name, (ok, allowed) in checks.items():
        v = getattr(config, name)
        if not isinstance(v, jax.core.Tracer):
            require(
                bool(np.all(ok(np.asarray(v)))),
                f"{type(config).__name__}.{name}={v} is invalid; it must be {allowed}",
            )


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-able dict (tuples become lists, arrays become scalars/lists)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if hasattr(v, "tolist"):
            v = v.tolist()
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Rebuild a config of type ``cls`` from ``to_dict`` output; unknown keys are an error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kwargs)


def stack_configs(configs: list[C]) -> C:
    """Stack configs that differ only in sweepable fields into one batched config for vmap."""
    if not configs:
        raise ValueError("stack_configs needs at least one config")
    first = configs[0]
    for i, c in enumerate(configs[1:], 1):
        for f in dataclasses.fields(first):
            if not f.metadata.get("pytree_node", True) and getattr(c, f.name) != getattr(
                first, f.name
            ):
                raise ValueError(
                    f"config {i} differs from config 0 in static field {f.name!r} "
                    f"({getattr(c, f.name)!r} vs {getattr(first, f.name)!r}); only sweepable "
                    "fields can vary inside one vmapped program"
                )
    for c in configs:
        if hasattr(c, "validate"):
            c.validate()
    return jax.tree.map(lambda *xs: jnp.asarray(xs, dtype=jnp.float32), *configs)
