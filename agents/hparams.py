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
