"""Skill-boundary detection on your own demonstrations: plain arrays in, segments out.

    found = discover(obs, actions, spaces.Discrete(5), starts=starts, true_boundaries=true)
    found.segments[i]          # [(start, end), ...] half-open steps of trajectory i
    found.boundary, found.nll  # bool / float32 [N, T]: cuts and the action model's per-step loss
    found.gap, found.scores    # the gap used; precision, recall, F1 on held-out trajectories

An unconditional action model (``skills.action_model``) is fitted to all trajectories; a new
segment opens where its loss jumps by more than ``gap`` nats above the mean since the last cut
(``skills.boundary``). The gap depends on the data and the model, so by default it is chosen:
with true boundaries, the candidate with the best F1 on the first ``held_in`` fraction of the
trajectories, scored on the rest; without them, Otsu's threshold of the loss jumps of an uncut
pass (spikes against ordinary steps; a heuristic, stated in ``Discovery.gap_rule``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agents.hparams import require, stack_configs
from agents.replay import Transition
from envs.core import spaces
from skills.action_model import ActionModel, ActionModelConfig
from skills.boundary import BoundaryConfig
from skills.sbd import segment_seeds, sweep_boundaries, sweep_scores, train_action_models
from skills.segments import to_segments

__all__ = ["Discovery", "discover"]

QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)  # of the uncut loss jumps


class Discovery(NamedTuple):
    """Segments of N trajectories of T steps, and how they were found."""

    segments: list[list[tuple[int, int]]]  # per trajectory: half-open (start, end) steps
    boundary: np.ndarray  # bool [N, T]: t opens a segment (episode starts included)
    nll: np.ndarray  # float32 [N, T]: the action model's loss, memory reset at cuts
    gap: float  # nats
    gap_rule: str  # how the gap was set
    scores: dict[str, float] | None  # precision, recall, f1 (given true boundaries) on the
    # trajectories the gap was not chosen on (all of them when the gap was given or unsupervised)
    model: ActionModel
    params: Any  # the fitted action model's parameters


def discover(
    obs: Any,
    actions: Any,
    action_space: spaces.Space,
    *,
    starts: Any = None,
    true_boundaries: Any = None,
    gap: float | None = None,
    min_len: int = 2,
    model: ActionModelConfig | None = None,
    held_in: float = 0.5,
    tolerance: int = 2,
    seed: int | jax.Array = 0,
) -> Discovery:
    """Segment ``obs`` [N, T, D] with ``actions`` [N, T] (discrete) or [N, T, A] (continuous).

    ``starts`` bool [N, T]: steps that begin an episode inside a trajectory (default: step 0
    only); ``true_boundaries`` bool [N, T]: known skill switches, for choosing the gap and
    scoring (matched within ``tolerance`` steps); ``gap``: use this gap (nats) instead;
    ``seed``: an int, or a ``jax.random.key``, for the action model's initialisation and batches.
    """
    config = model or ActionModelConfig()
    obs, actions = np.asarray(obs, np.float32), np.asarray(actions)
    discrete = isinstance(action_space, spaces.Discrete)
    require(obs.ndim == 3, f"obs must be [N trajectories, T steps, obs_dim], got {obs.shape}")
    num, length = obs.shape[:2]
    require(
        num >= 1 and length >= 2 * min_len,
        f"obs holds {num} trajectories of {length} steps; a boundary needs min_len={min_len} "
        f"steps on each side, so give trajectories of at least {2 * min_len} steps (or a smaller "
        "min_len)",
    )
    want = (num, length) if discrete else (num, length, int(np.prod(action_space.shape)))
    require(actions.shape == want, f"actions must have shape {want}, got {actions.shape}")
    actions = actions.astype(np.int32 if discrete else np.float32)
    first = np.zeros((num, length), bool)
    first[:, 0] = True
    starts = first if starts is None else np.asarray(starts, bool) | first
    require(starts.shape == (num, length), f"starts must be bool [{num}, {length}]")
    if true_boundaries is not None:
        true_boundaries = np.asarray(true_boundaries, bool)
        require(
            true_boundaries.shape == (num, length),
            f"true_boundaries must be bool [{num}, {length}], got {true_boundaries.shape}",
        )
    require(0 < held_in < 1, f"held_in={held_in} must be in (0, 1)")
    ends = np.zeros((num, length), bool)
    ends[:, :-1] = starts[:, 1:]  # an episode ends where the next one starts
    zeros = np.zeros((num, length), np.float32)
    demos = Transition(obs, actions, zeros, obs, np.zeros_like(ends), ends)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
    params, _ = train_action_models(config, action_space, jax.tree.map(lambda x: x[None], demos),
                                    key[None])  # fmt: skip
    fitted = ActionModel.create(config, action_space)
    batch = lambda x: jnp.asarray(x)[None]  # one "seed"
    run = lambda cfg, rows=slice(None): segment_seeds(
        fitted, params, batch(obs[rows]), batch(actions[rows]), batch(starts[rows]), cfg
    )
    scores, scored = None, slice(None)
    if gap is not None:
        rule = "given"
    else:
        uncut = run(BoundaryConfig(gap=1e9, min_len=min_len, max_len=length))  # no cuts
        jumps = np.asarray(uncut.score)[np.isfinite(np.asarray(uncut.score))]
        require(jumps.size > 0, "the trajectories are too short to score any loss jump")
        candidates = np.unique(np.quantile(jumps, QUANTILES))
        if true_boundaries is None:
            gap, rule = _otsu(jumps), "Otsu's threshold of the loss jumps"
        else:
            split = max(1, min(num - 1, round(held_in * num)))
            require(num >= 2, "choosing the gap from true boundaries needs >= 2 trajectories")
            sweep = stack_configs(
                [BoundaryConfig(gap=float(g), min_len=min_len, max_len=length) for g in candidates]
            )
            rows = slice(0, split)
            swept = sweep_boundaries(
                fitted, params, batch(obs[rows]), batch(actions[rows]), batch(starts[rows]), sweep
            )
            f1 = np.asarray(
                sweep_scores(swept, batch(true_boundaries[rows]), batch(starts[rows]), tolerance)[
                    "f1"
                ]
            )[0]
            gap, rule = float(candidates[int(np.argmax(f1))]), f"best F1 on {split} trajectories"
            scored = slice(split, num)
    found = run(BoundaryConfig(gap=gap, min_len=min_len, max_len=length))
    if true_boundaries is not None:  # on the trajectories the gap was not chosen on
        got = sweep_scores(
            np.asarray(found.boundary)[:, None, scored],
            batch(true_boundaries[scored]),
            batch(starts[scored]),
            tolerance,
        )
        scores = {k: float(np.asarray(v)[0, 0]) for k, v in got.items()}
    boundary = np.asarray(found.boundary)[0] | starts
    return Discovery(
        [to_segments(b) for b in boundary],
        boundary,
        np.asarray(found.nll)[0],
        float(gap),
        rule,
        scores,
        fitted,
        params,
    )


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """The threshold splitting ``values`` into two classes of maximal between-class variance
    (Otsu, 1979): here, loss spikes at skill switches against ordinary steps."""
    counts, edges = np.histogram(values, bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w = np.cumsum(counts)  # weight of the lower class at each cut
    m = np.cumsum(counts * centres)
    total_w, total_m = w[-1], m[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_m * w - m * total_w) ** 2 / (w * (total_w - w))
    return float(edges[1:][int(np.nanargmax(np.where(w < total_w, between, np.nan)))])
