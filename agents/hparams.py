"""Config helpers: static vs sweepable fields, validation, and stacking configs for ``jax.vmap``."""

from __future__ import annotations

import dataclasses
import os
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
    """Raise a ValueError naming the first field whose value fails its check (and any layer
    size, a field named ``*hidden`` or ``*width``, below 1).

    ``checks`` maps a field name to (predicate over an array, what the value must be besides
    finite); values that are traced (inside ``jax.jit``/``vmap``) are skipped, arrays (sweeps)
    are checked element-wise.
    """
    for field in dataclasses.fields(config):  # layer sizes, wherever a config has them
        if field.name.endswith(("hidden", "width")):
            sizes = getattr(config, field.name)
            sizes = sizes if isinstance(sizes, tuple | list) else (sizes,)
            require(
                all(isinstance(h, int | np.integer) and h >= 1 for h in sizes),
                f"{type(config).__name__}.{field.name}={getattr(config, field.name)} is invalid; "
                "layer sizes must be integers >= 1",
            )
    for name, (ok, allowed) in checks.items():
        v = getattr(config, name)
        if not isinstance(v, jax.core.Tracer):
            x = np.asarray(v)
            require(
                bool(np.all(np.isfinite(x)) and np.all(ok(x))),
                f"{type(config).__name__}.{name}={v} is invalid; it must be finite and {allowed}",
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


def available_memory(device: jax.Device | None = None) -> int:
    """Bytes free for new arrays on ``device`` (the default device): its allocator's headroom on
    accelerators, ``MemAvailable`` of the host on CPU."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(num_bytes: int, what: str, fix: str, device: jax.Device | None = None) -> None:
    """Raise a ValueError if ``num_bytes`` exceed the memory ``available_memory`` reports."""
    free = available_memory(device)
    require(
        num_bytes <= free,
        f"{what} needs about {num_bytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB is "
        f"free; {fix}",
    )
