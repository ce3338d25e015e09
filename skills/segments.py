"""Segments: from boundary masks to (start, end) pairs, baselines, scores and training data.

A segmentation of a trajectory [T] is a bool boundary mask, True where a segment opens (always at
``t = 0``); ``to_segments`` turns it into half-open ``(start, end)`` pairs. Fixed-length and
random segmentations are the baselines of skill-boundary detection; ``boundary_scores`` matches
predicted to true boundaries one-to-one within a tolerance; ``hindsight_goals`` turns segments
into goal-conditioned training data (each step's goal is where its segment ended).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agents.hparams import require

__all__ = [
    "BoundaryCounts",
    "boundary_scores",
    "fixed_length_boundaries",
    "hindsight_goals",
    "match_boundaries",
    "pooled_counts",
    "random_boundaries",
    "segment_end",
    "to_segments",
]


def to_segments(boundary: Any) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` segments (host numpy) of a bool [T] boundary array.

    Each segment starts at index 0 or at a True entry and runs up to the next True entry
    (exclusive) or to T; ``range(start, end)`` are the steps of one segment.
    """
    boundary = np.asarray(boundary, dtype=bool)
    if boundary.ndim != 1:
        raise ValueError(
            f"to_segments: expected a 1-D [T] array, got shape {boundary.shape}; "
            "call it once per trajectory."
        )
    starts = np.flatnonzero(boundary)
    starts = np.concatenate([[0], starts[starts > 0]]).astype(int)
    ends = np.append(starts[1:], boundary.size)
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e > s]


def fixed_length_boundaries(length: int | jax.Array, episode_start: jax.Array) -> jax.Array:
    """bool [..., T]: a segment every ``length`` steps, restarting the count at episode starts."""
    episode_start = jnp.asarray(episode_start, bool)
    t = jnp.arange(episode_start.shape[-1])
    last_start = jax.lax.cummax(jnp.where(episode_start, t, 0), axis=episode_start.ndim - 1)
    return ((t - last_start) % length == 0) | episode_start


def random_boundaries(
    key: jax.Array, rate: float | jax.Array, episode_start: jax.Array
) -> jax.Array:
    """bool [..., T]: each step opens a segment with probability ``rate`` (and episode starts)."""
    episode_start = jnp.asarray(episode_start, bool)
    return (jax.random.uniform(key, episode_start.shape) < rate) | episode_start


class BoundaryCounts(NamedTuple):
    """Matched and unmatched boundaries of one or many trajectories (sum them to pool)."""

    true_positive: jax.Array  # int32: predicted boundaries matched to a true one
    num_predicted: jax.Array  # int32
    num_true: jax.Array  # int32


def match_boundaries(
    predicted: jax.Array, true: jax.Array, tolerance: int, ignore: jax.Array | None = None
) -> BoundaryCounts:
    """One-to-one matching of predicted to true boundaries (bool [T]) at most ``tolerance`` apart.

    Predicted boundaries are taken in time order, each matched to the earliest unmatched true
    boundary within the tolerance. Steps where ``ignore`` is set (default: t = 0; pass episode
    starts) are boundaries by construction and are not counted. Vmap for batches.
    """
    predicted, true = jnp.asarray(predicted, bool), jnp.asarray(true, bool)
    require(
        predicted.ndim == 1 and predicted.shape == true.shape,
        f"match_boundaries: expected two bool [T] masks, got shapes {predicted.shape} and "
        f"{true.shape}; vmap over trajectories",
    )
    t = jnp.arange(true.shape[0])
    ignore = (t == 0) if ignore is None else jnp.asarray(ignore, bool) | (t == 0)
    predicted, true = predicted & ~ignore, true & ~ignore

    def step(free, i):
        candidates = free & (jnp.abs(t - i) <= tolerance) & predicted[i]
        hit = candidates.any()
        first = jnp.argmax(candidates)
        return free.at[first].set(free[first] & ~hit), hit

    _, hits = jax.lax.scan(step, true, t)
    count = lambda x: x.sum().astype(jnp.int32)
    return BoundaryCounts(count(hits), count(predicted), count(true))


def pooled_counts(
    predicted: jax.Array, true: jax.Array, start: jax.Array, tolerance: int | jax.Array
) -> BoundaryCounts:
    """``match_boundaries`` of each trajectory [N, T], summed over trajectories (episode
    starts ``start`` [N, T] are ignored)."""
    match = lambda p, t, s: match_boundaries(p, t, tolerance, s)
    return jax.tree.map(jnp.sum, jax.vmap(match)(predicted, true, start))


def boundary_scores(counts: BoundaryCounts) -> dict[str, jax.Array]:
    """Precision, recall and F1 of (pooled) counts; 0 where undefined (nothing predicted)."""
    tp, pred, true = (jnp.asarray(x, jnp.float32) for x in counts)
    precision = jnp.where(pred > 0, tp / jnp.maximum(pred, 1), 0.0)
    recall = jnp.where(true > 0, tp / jnp.maximum(true, 1), 0.0)
    f1 = jnp.where(
        precision + recall > 0, 2 * precision * recall / jnp.maximum(precision + recall, 1e-9), 0.0
    )
    return {"precision": precision, "recall": recall, "f1": f1}


def segment_end(boundary: jax.Array) -> jax.Array:
    """int32 [..., T]: the index of the last step of the segment each step belongs to."""
    boundary = jnp.asarray(boundary, bool)
    size = boundary.shape[-1]
    t = jnp.arange(size)
    # the first segment start after t, found as a reverse running minimum
    starts_after = jnp.where(jnp.roll(boundary, -1, axis=-1) & (t < size - 1), t + 1, size)
    axis = boundary.ndim - 1
    return (jax.lax.cummin(starts_after, axis=axis, reverse=True) - 1).astype(jnp.int32)


def hindsight_goals(next_obs: jax.Array, boundary: jax.Array) -> jax.Array:
    """[..., T, D]: each step's goal, the observation its segment's last action led to.

    ``next_obs`` [..., T, D] is the pre-reset next observation; segments never span episodes
    when ``boundary`` includes the episode starts.
    """
    end = segment_end(boundary)
    require(
        next_obs.shape[:-1] == end.shape,
        f"hindsight_goals: next_obs {next_obs.shape} must be boundary {end.shape} + [D]",
    )
    return jnp.take_along_axis(next_obs, end[..., None], axis=-2)
