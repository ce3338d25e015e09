"""LoRA adapters for every dense layer of any flax network, mixed in parameter space.

    adapter = init_adapter(key, params, rank=8)                  # B = 0: the network unchanged
    out = apply_lora(net.apply, params, stack([a1, a2]), weights, scale, *inputs)
    merged = merge(params, adapter, scale)                        # W0 + scale * A B, per layer

Each dense layer (every 2-D ``kernel`` in the parameter tree) computes, with K adapters,

    y = x W0 + b + sum_i w_i * scale * (x A_i) B_i

(a layer narrower than the rank, such as a small output layer, gets a full-rank update) where
``w`` [K] is fixed, or [..., K] with the same leading shape as the layer's input (a weight
per example: context-aware composition, ``w = alpha(s)``). A is lecun-normal [in, rank] and B
zeros [rank, out], so a new adapter leaves the network exactly as it was. The base parameters
(kernels, biases, LayerNorm scales, learned features) are never touched: train an adapter by
differentiating with respect to it alone. Adapters attach to layers by their path in the
parameter tree (flax's ``intercept_methods`` adds the low-rank term to each ``nn.Dense`` call),
so a network needs no LoRA-specific code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Adapter",
    "apply_lora",
    "check_adapter",
    "dense_kernels",
    "init_adapter",
    "merge",
    "num_adapters",
    "num_params",
    "rank_of",
    "stack",
]

# layer path ("Dense_0", "Block_1/Dense_0", ...) -> {"A": [in, rank], "B": [rank, out]}
# (stacked adapters: [K, in, rank] and [K, rank, out])
Adapter = dict[str, dict[str, jax.Array]]


def dense_kernels(params: Any) -> dict[str, jax.Array]:
    """Every dense kernel [in, out] of a flax parameter tree, by layer path."""
    tree = params.get("params", params) if isinstance(params, dict) else params
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", k)) for k in path]
        if names and names[-1] == "kernel" and np.ndim(leaf) == 2:
            out["/".join(names[:-1])] = leaf
    return out


def init_adapter(key: jax.Array, params: Any, rank: int) -> Adapter:
    """A fresh adapter for every dense layer of ``params``: A lecun-normal, B zeros."""
    kernels = dense_kernels(params)
    if not kernels:
        raise ValueError("init_adapter: the parameter tree has no dense kernel to adapt")
    largest = max(min(k.shape) for k in kernels.values())
    if not (isinstance(rank, int | np.integer) and 1 <= rank <= largest):
        raise ValueError(
            f"LoRA rank={rank} must be an int in [1, {largest}] (no layer of this network can "
            "use a higher rank); choose a smaller rank or a wider network"
        )
    keys = jax.random.split(key, len(kernels))
    lecun = nn.initializers.lecun_normal()
    return {
        path: {
            "A": lecun(k, (w.shape[0], rank), jnp.float32),
            "B": jnp.zeros((rank, w.shape[1]), jnp.float32),
        }
        for k, (path, w) in zip(keys, sorted(kernels.items()))
    }


def check_adapter(params: Any, adapter: Adapter, name: str = "adapter") -> None:
    """Raise a ValueError naming ``name`` and the layer unless ``adapter`` fits ``params``'s
    dense layers one for one (stacked adapters: any leading [K] axis)."""
    kernels = dense_kernels(params)
    missing, extra = sorted(set(kernels) - set(adapter)), sorted(set(adapter) - set(kernels))
    if missing or extra:
        raise ValueError(
            f"{name} does not fit this network: layers {missing} have no adapter and {extra} "
            "are not layers of it; train the skill on this base policy (the same architecture)"
        )
    for path, w in kernels.items():
        a, b = adapter[path]["A"].shape, adapter[path]["B"].shape
        if a[-2] != w.shape[0] or b[-1] != w.shape[1] or a[-1] != b[-2]:
            raise ValueError(
                f"{name}: layer {path} has kernel {tuple(w.shape)} but the adapter has A {a} "
                f"and B {b}; train the skill on this base policy (the same layer sizes)"
            )


def stack(adapters: list[Adapter]) -> Adapter:
    """K adapters as one with a leading [K] axis on every A and B; lower ranks are padded with
    zero columns of A and rows of B (the same low-rank term, exactly)."""
    if not adapters:
        raise ValueError("stack needs at least one adapter")
    rank = max(rank_of(a) for a in adapters)
    pad = lambda x, axis: jnp.pad(
        x, [(0, rank - x.shape[axis]) if i == axis else (0, 0) for i in (0, 1)]
    )
    padded = [
        {path: {"A": pad(ab["A"], 1), "B": pad(ab["B"], 0)} for path, ab in a.items()}
        for a in adapters
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *padded)


def rank_of(adapter: Adapter) -> int:
    """The rank of an adapter (of a stacked one: its padded rank)."""
    return int(next(iter(adapter.values()))["A"].shape[-1])


def num_adapters(adapters: Adapter) -> int:
    """K, the number of adapters stacked in ``adapters``."""
    return int(next(iter(adapters.values()))["A"].shape[0])


def num_params(tree: Any) -> int:
    """The number of scalars in a pytree (an adapter, or a network's parameters)."""
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def apply_lora(
    apply_fn: Callable[..., Any],
    params: Any,
    adapters: Adapter,
    weights: jax.Array,
    scale: float,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``apply_fn(params, *args, **kwargs)`` with every dense layer carrying the stacked
    ``adapters`` [K] mixed by ``weights``: [K], or [..., K] matching each layer's input."""

    def interceptor(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        module = context.module
        if not isinstance(module, nn.Dense) or context.method_name != "__call__":
            return out
        path = "/".join(module.path)
        if path not in adapters:
            return out
        x = call_args[0]
        xa = jnp.einsum("...i,kir->...kr", x, adapters[path]["A"])
        xab = jnp.einsum("...kr,kro->...ko", xa, adapters[path]["B"])  # [..., K, out]
        w = jnp.asarray(weights, xab.dtype)
        delta = jnp.einsum("k,...ko->...o", w, xab) if w.ndim == 1 else (w[..., None] * xab).sum(-2)
        return out + scale * delta

    with nn.intercept_methods(interceptor):
        return apply_fn(params, *args, **kwargs)


def merge(params: Any, adapter: Adapter, scale: float, weight: float = 1.0) -> Any:
    """``params`` with ``weight * scale * A B`` added to each adapted kernel (the skill merged
    into the base: the merged network without adapters equals the base with this adapter)."""
    check_adapter(params, adapter)

    def add(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        layer = "/".join(n for n in names[:-1] if n != "params")
        if names[-1] != "kernel" or layer not in adapter:
            return leaf
        return leaf + weight * scale * adapter[layer]["A"] @ adapter[layer]["B"]

    return jax.tree_util.tree_map_with_path(add, params)
