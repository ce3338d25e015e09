"""Skill-boundary detection (SBD): cut unlabelled trajectories where an action model is surprised.

The rule of Deng et al. (arXiv 2503.10684; ``compute_boundary`` in CraftJarvis/SkillDiscovery),
run over one trajectory as a single ``lax.scan`` and vmapped over trajectories. With ``prev``
the first step of the current segment, step ``t``:

1. The causal action model scores ``nll[t] = -log pi(a_t | o_{prev..t})`` from the memory it
   has built since the last reset, and adds ``o_t`` to that memory.
2. Step ``t`` is scored unless it is the first step of the trajectory (``t == prev == 0``)
   with no event pending. A scored loss joins the losses since the last boundary; with at least
   two of them, ``score[t] = nll[t] - mean(losses)`` (the mean includes ``nll[t]``), and
   ``score[t] > gap`` raises a flag that stays up until the next cut.
3. ``t`` is cut (it opens a new segment; ``[prev, t)`` is closed) when ``t - prev >= min_len``
   and the flag is up, an event is pending, or ``t - prev >= max_len``. A cut clears the losses
   and the flag, consumes one pending event, and resets the memory, so ``t + 1`` is scored from
   a fresh memory (the spike step itself was scored with the old one, as in the reference).

Events (optional, e.g. environment events) are a bool [T] mask unioned with the loss rule: an
event at ``t`` forces a cut at ``t``, or at the first step where ``min_len`` allows. Episode
starts (optional) begin a fresh trajectory: memory, losses, flag and events are reset before
the step is scored, and the step opens a segment. ``boundary[t]`` is True iff ``t`` opens a
segment (``t == 0``, an episode start or a cut): the convention of the multi-skill gridworld's
ground-truth ``info["boundary"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from agents.hparams import require, sweepable
from envs.core import is_concrete

__all__ = ["BoundaryConfig", "Segmentation", "StepFn", "detect_boundaries"]

Memory = Any  # a pytree: the action model's memory for one trajectory
# step_fn(memory, x_t) -> (memory after x_t, nll of x_t's action []) for one trajectory step
StepFn = Callable[[Memory, Any], tuple[Memory, jax.Array]]


@struct.dataclass
class BoundaryConfig:
    """The rule's settings (the reference's values: gap 18 nats on VPT, min 2, max 12800).

    All fields are pytree leaves, so a gap sweep (a precision-recall curve) is one vmapped
    program; ``gap`` is in nats and depends on the action model and the action space.
    """

    gap: float = sweepable(18.0)
    min_len: int = sweepable(2)
    max_len: int = sweepable(12_800)

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting (concrete values only)."""
        values = {k: getattr(self, k) for k in ("gap", "min_len", "max_len")}
        if not all(is_concrete(v) for v in values.values()):
            return
        gap, lo, hi = (np.asarray(v) for v in values.values())  # no tracing under jit
        require(bool(np.all(np.isfinite(gap))), f"BoundaryConfig.gap must be finite, got {gap}")
        require(
            bool(np.all(lo >= 1)),
            f"BoundaryConfig.min_len={lo} must be >= 1 (a segment holds at least one step)",
        )
        require(
            bool(np.all(hi >= lo)),
            f"BoundaryConfig.max_len={hi} must be >= min_len={lo}; raise max_len",
        )


class Segmentation(NamedTuple):
    """The rule's output for one trajectory [T] (or a batch [N, T])."""

    boundary: jax.Array  # bool [T]: t opens a segment
    nll: jax.Array  # float32 [T]: the model's loss at t with memory reset at boundaries
    score: jax.Array  # float32 [T]: nll - mean of the losses since the last cut; NaN unscored
    flagged: jax.Array  # bool [T]: a spike since the last cut, t included (before t's cut)


class _Carry(NamedTuple):
    memory: Memory
    total: jax.Array  # sum of the scored losses since the last cut
    count: jax.Array  # how many
    prev: jax.Array  # int32: first step of the current segment
    flag: jax.Array  # bool: a spike was seen since the last cut
    pending: jax.Array  # int32: events not yet turned into cuts


def _check_inputs(xs: Any, event: Any, episode_start: Any, config: BoundaryConfig) -> int:
    """The trajectory length T; a ValueError names any input of another length or kind."""
    config.validate()
    leaves = jax.tree.leaves(xs)
    require(bool(leaves), "detect_boundaries: xs holds no arrays; pass (obs [T, D], action [T])")
    lengths = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    require(
        len(lengths) == 1 and None not in lengths,
        f"detect_boundaries: every leaf of xs needs the same leading time axis, got lengths "
        f"{sorted(map(str, lengths))}; vmap over trajectories rather than passing a batch",
    )
    (length,) = lengths
    require(length >= 1, "detect_boundaries: the trajectory is empty (T = 0)")
    for name, mask in (("event", event), ("episode_start", episode_start)):
        require(
            mask is None or jnp.shape(mask) == (length,),
            f"detect_boundaries: {name} must be a bool [T={length}] mask, got shape "
            f"{jnp.shape(mask)}",
        )
    return length


def detect_boundaries(
    step_fn: StepFn,
    memory: Memory,
    xs: Any,
    config: BoundaryConfig,
    event: jax.Array | None = None,
    episode_start: jax.Array | None = None,
) -> Segmentation:
    """Segment one trajectory ``xs`` (a pytree of [T, ...] arrays, e.g. (obs, action)).

    ``memory`` is the model's fresh memory, restored at every boundary; ``step_fn`` scores one
    step (see ``StepFn``). Vmap over trajectories (and over configs for a gap sweep).
    """
    length = _check_inputs(xs, event, episode_start, config)
    no_mask = jnp.zeros((length,), bool)
    event = no_mask if event is None else jnp.asarray(event, bool)
    episode_start = no_mask if episode_start is None else jnp.asarray(episode_start, bool)
    fresh = memory
    zero, izero, false = jnp.float32(0.0), jnp.int32(0), jnp.array(False)

    def restart(cond: jax.Array, c: _Carry, t: jax.Array) -> _Carry:
        """``c`` with the memory, losses and flag of a new segment opening at ``t`` if ``cond``."""
        where = lambda new, old: jnp.where(cond, new, old)
        return _Carry(
            jax.tree.map(where, fresh, c.memory),
            where(zero, c.total),
            where(izero, c.count),
            where(t, c.prev),
            where(false, c.flag),
            c.pending,
        )

    def step(c: _Carry, inputs) -> tuple[_Carry, Segmentation]:
        x, ev, start, t = inputs
        c = restart(start, c, t)
        c = c._replace(pending=jnp.where(start, izero, c.pending) + ev.astype(jnp.int32))
        memory, nll = step_fn(c.memory, x)
        nll = jnp.asarray(nll, jnp.float32)
        scored = (t > c.prev) | (c.pending > 0)  # a trajectory's first step only with an event
        total = c.total + jnp.where(scored, nll, 0.0)
        count = c.count + scored.astype(jnp.int32)
        score = jnp.where(scored & (count >= 2), nll - total / jnp.maximum(count, 1), jnp.nan)
        flag = c.flag | (score > config.gap)  # NaN compares False
        steps = t - c.prev
        cut = (steps >= config.min_len) & (flag | (c.pending > 0) | (steps >= config.max_len))
        c = _Carry(memory, total, count, c.prev, flag, c.pending)
        c = restart(cut, c, t)
        c = c._replace(pending=c.pending - (cut & (c.pending > 0)).astype(jnp.int32))
        out = Segmentation(cut | start | (t == 0), nll, score, flag)
        return c, out

    init = _Carry(fresh, zero, izero, izero, false, izero)
    inputs = (xs, event, episode_start, jnp.arange(length, dtype=jnp.int32))
    _, seg = jax.lax.scan(step, init, inputs)
    return seg
