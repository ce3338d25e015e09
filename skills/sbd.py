"""The measurements of skill-boundary detection studies, on batches of seeds of demonstrations.

Arrays carry a leading seed axis ``S`` (one program over all seeds) over trajectories [N, T]:
boundaries, true switches and episode starts are bool [S, N, T]. Scores are per seed, so a
study aggregates them as it likes (interquartile means with bootstrap CIs in ``experiments``).

    params, loss = train_action_models(config, action_space, demos, keys)   # vmapped over seeds
    model, params, loss = action_models(config, action_space, demos, {"hidden": obs}, keys)
    swept = sweep_boundaries(model, params, obs, action, start, sweep)      # [S, G, N, T]
    pr = sweep_scores(swept, true, start, tolerance)                        # {metric: [S, G]}
    fixed, rand, rand_at_rate = baseline_scores(true, start, keys, 2, (4, 8), (0.1,))
    scores, chosen = score_switches(model, params, obs, action, start, true, behaviour, ...)
    goal_params = train_goal_policies(policy_config, action_space, demos, ends, keys)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agents.hparams import require, stack_configs
from agents.replay import Transition
from envs.core import spaces
from skills.action_model import ActionModel, ActionModelConfig, make_action_model
from skills.boundary import BoundaryConfig, Segmentation, detect_boundaries
from skills.policies import GoalData, GoalPolicyConfig, make_goal_policy
from skills.segments import (
    boundary_scores,
    fixed_length_boundaries,
    pooled_counts,
    random_boundaries,
)

__all__ = [
    "action_models",
    "baseline_scores",
    "check_stage_keys",
    "detection_scores",
    "nll_around_switches",
    "nll_spikes",
    "plain_nll",
    "recall_by_switch",
    "score_switches",
    "segment",
    "segment_seeds",
    "segmentation_scores",
    "sweep_boundaries",
    "sweep_scores",
    "train_action_models",
    "train_goal_policies",
]

Scores = dict[str, jax.Array]  # precision, recall, f1


def check_stage_keys(keys: Mapping[str, jax.Array], stages: Sequence[str], where: str) -> None:
    """Raise a ValueError unless ``keys`` holds [S] seed keys for every one of ``stages``, the
    same S for all."""
    missing = sorted(set(stages) - set(keys))
    require(not missing, f"{where}: keys lacks the stage(s) {missing}")
    sizes = {stage: int(np.shape(keys[stage])[0]) for stage in stages}
    require(
        len(set(sizes.values())) == 1,
        f"{where}: every stage needs one key per seed, the same number; got {sizes}",
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def train_action_models(
    config: ActionModelConfig, action_space: spaces.Space, demos: Transition, keys: jax.Array
) -> tuple[Any, jax.Array]:
    """One action model per seed on that seed's ``demos`` [S, N, T, ...] (``keys`` [S]), in one
    program: (params [S, ...], loss [S, total_steps])."""

    def one(key: jax.Array, demos: Transition) -> tuple[Any, jax.Array]:
        agent = make_action_model(config, action_space, demos)
        state, metrics = agent.train(key)
        return agent.policy_params(state), metrics["loss"]

    return jax.vmap(one)(keys, demos)


def action_models(
    config: ActionModelConfig,
    action_space: spaces.Space,
    demos: Transition,
    views: Mapping[str, jax.Array],
    keys: jax.Array,
) -> tuple[ActionModel, dict[str, Any], dict[str, np.ndarray]]:
    """``train_action_models`` on the demonstrations [S, N, T, ...] seen through each view of
    their observations ({arm: obs [S, N, T, D]}, e.g. the skill hidden and revealed):
    (the model, {arm: params [S, ...]}, {arm: loss [S, total_steps]})."""
    trained = {
        arm: train_action_models(config, action_space, demos._replace(obs=obs), keys)
        for arm, obs in views.items()
    }
    params = {arm: p for arm, (p, _) in trained.items()}
    return (
        ActionModel.create(config, action_space),
        params,
        {arm: np.asarray(loss) for arm, (_, loss) in trained.items()},
    )


def segment(
    model: ActionModel,
    params: Any,
    obs: jax.Array,
    action: jax.Array,
    start: jax.Array,
    config: BoundaryConfig,
    events: jax.Array | None = None,
) -> Segmentation:
    """``detect_boundaries`` on each trajectory [N, T] of one seed (memory fresh at ``start``)."""
    step = model.step_fn(params)
    memory = model.initial_memory()
    detect = lambda o, a, e, s: detect_boundaries(step, memory, (o, a), config, e, s)
    if events is None:
        return jax.vmap(lambda o, a, s: detect(o, a, None, s))(obs, action, start)
    return jax.vmap(detect)(obs, action, events, start)


def segment_seeds(
    model: ActionModel,
    params: Any,
    obs: jax.Array,
    action: jax.Array,
    start: jax.Array,
    config: BoundaryConfig,
    events: jax.Array | None = None,
) -> Segmentation:
    """``segment`` of every seed [S, N, T] (``params`` [S]) in one program: [S, N, T]."""
    config.validate()
    return _segment_seeds(model, params, obs, action, start, config, events)


@functools.partial(jax.jit, static_argnums=0)
def _segment_seeds(model, params, obs, action, start, config, events):
    one = lambda p, o, a, s, e: segment(model, p, o, a, s, config, e)
    return jax.vmap(one)(params, obs, action, start, events)


def sweep_boundaries(
    model: ActionModel,
    params: Any,
    obs: jax.Array,
    action: jax.Array,
    start: jax.Array,
    sweep: BoundaryConfig,
    events: jax.Array | None = None,
) -> jax.Array:
    """bool [S, G, N, T]: the boundaries of every seed [S, N, T] (``params`` [S]) under each of
    the G stacked configs of ``sweep`` (``agents.hparams.stack_configs``), in one program."""
    sweep.validate()
    return _sweep_boundaries(model, params, obs, action, start, sweep, events)


@functools.partial(jax.jit, static_argnums=0)
def _sweep_boundaries(model, params, obs, action, start, sweep, events):
    def one_seed(p, o, a, s, e):
        return jax.vmap(lambda c: segment(model, p, o, a, s, c, e).boundary)(sweep)

    return jax.vmap(one_seed)(params, obs, action, start, events)


@jax.jit
def segmentation_scores(
    predicted: jax.Array, true: jax.Array, start: jax.Array, tolerance: int | jax.Array
) -> Scores:
    """{metric: [S]}: pooled precision, recall and F1 per seed of boundaries [S, N, T]."""
    per_seed = lambda p, t, s: boundary_scores(pooled_counts(p, t, s, tolerance))
    return jax.vmap(per_seed)(predicted, true, start)


@jax.jit
def sweep_scores(
    swept: jax.Array, true: jax.Array, start: jax.Array, tolerance: int | jax.Array
) -> Scores:
    """{metric: [S, G]}: ``segmentation_scores`` of each setting of a sweep [S, G, N, T]."""
    per_seed = lambda p, t, s: boundary_scores(pooled_counts(p, t, s, tolerance))
    return jax.vmap(lambda q, t, s: jax.vmap(lambda p: per_seed(p, t, s))(q))(swept, true, start)


def baseline_scores(
    true: jax.Array,
    start: jax.Array,
    keys: jax.Array,
    tolerance: int,
    fixed_lengths: Sequence[int],
    random_rates: Sequence[float],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fixed-length and random segmentations of [S, N, T] trajectories, scored like SBD.

    Returns ``({metric: [S, L]}`` per fixed length, ``{metric: [S, R]}`` per random rate,
    ``{metric: [S]}`` random at the true boundary rate) with ``keys`` [S] drawing the random ones.
    """

    @jax.jit
    def fixed_scores(lengths):  # [L] -> {metric: [L, S]}
        return jax.vmap(
            lambda n: segmentation_scores(fixed_length_boundaries(n, start), true, start, tolerance)
        )(lengths)

    @jax.jit
    def random_scores(rates):  # [R] -> {metric: [R, S]}
        draw = jax.vmap(random_boundaries, in_axes=(0, None, 0))
        return jax.vmap(
            lambda r: segmentation_scores(draw(keys, r, start), true, start, tolerance)
        )(rates)

    transpose = lambda d: {k: np.asarray(v).T for k, v in d.items()}
    fixed = transpose(fixed_scores(jnp.asarray(fixed_lengths)))
    rand = transpose(random_scores(jnp.asarray(random_rates)))
    true_rate = float(np.asarray(true & ~start).mean())
    at_rate = jax.device_get(random_scores(jnp.asarray([true_rate])))
    return fixed, rand, {k: np.asarray(v)[0] for k, v in at_rate.items()}


def detection_scores(
    swept: dict[str, jax.Array],
    true: jax.Array,
    start: jax.Array,
    keys: jax.Array,
    tolerance: int,
    fixed_lengths: Sequence[int],
    random_rates: Sequence[float],
    chosen: dict[str, jax.Array] | None = None,
) -> dict[str, Any]:
    """Per-seed scores of swept segmentations {arm: bool [S, G, N, T]} against the true
    switches [S, N, T] within ``tolerance``, beside fixed-length and random baselines (and of
    the ``chosen`` segmentations {arm: bool [S, N, T]}, under ``chosen``).

    ``pr``, ``fixed_pr`` and ``random_pr`` hold {metric: [S, G | L | R]} per setting;
    ``best_gap_f1``, ``fixed_best_f1`` and ``random_best_f1`` the best setting per seed (an
    oracle) [S]; ``fixed_best_length`` is the length best in median over seeds and
    ``fixed_at_best_length`` its scores [S]; ``random_at_true_rate`` random boundaries at the
    true switch rate [S]; ``boundary_rate`` {arm: [S, G]} the fraction of steps cut.
    """
    pr = {arm: jax.device_get(sweep_scores(b, true, start, tolerance)) for arm, b in swept.items()}
    fixed, rand, rand_at_rate = baseline_scores(
        true, start, keys, tolerance, fixed_lengths, random_rates
    )
    best = int(np.argmax(np.median(fixed["f1"], 0)))
    at = {arm: segmentation_scores(b, true, start, tolerance) for arm, b in (chosen or {}).items()}
    return {
        **({"chosen": jax.device_get(at)} if chosen else {}),
        "pr": pr,
        "best_gap_f1": {arm: np.asarray(c["f1"]).max(1) for arm, c in pr.items()},
        "boundary_rate": {arm: np.asarray(b.mean((2, 3))) for arm, b in swept.items()},
        "fixed_pr": fixed,
        "fixed_best_f1": fixed["f1"].max(1),
        "fixed_best_length": int(fixed_lengths[best]),
        "fixed_at_best_length": {k: v[:, best] for k, v in fixed.items()},
        "random_pr": rand,
        "random_best_f1": rand["f1"].max(1),
        "random_at_true_rate": rand_at_rate,
    }


@functools.partial(jax.jit, static_argnums=0)
def plain_nll(
    model: ActionModel, params: Any, obs: jax.Array, action: jax.Array, start: jax.Array
) -> jax.Array:
    """[S, N, T]: the action model's NLL with its memory reset only at episode starts."""

    def one_seed(p, o, a, s):
        tm = lambda x: jnp.swapaxes(x, 0, 1)
        return model.nll(p, tm(o), tm(a), tm(s)).T

    return jax.vmap(one_seed)(params, obs, action, start)


def nll_spikes(nll: jax.Array, true: jax.Array, start: jax.Array) -> dict[str, np.ndarray]:
    """Mean NLL [S] at true switches (``nll_at_switch``), away from them (``nll_elsewhere``:
    neither a boundary nor the step before one) and the difference (``spike``), from
    ``plain_nll`` [S, N, T]."""
    switch = true & ~start
    within = ~true & ~jnp.roll(true, -1, axis=-1)
    mean = lambda mask: np.asarray((nll * mask).sum((1, 2)) / mask.sum((1, 2)))
    at, elsewhere = mean(switch), mean(within)
    return {"nll_at_switch": at, "nll_elsewhere": elsewhere, "spike": at - elsewhere}


def nll_around_switches(
    nll: np.ndarray, true: np.ndarray, start: np.ndarray, offsets: Sequence[int]
) -> dict[str, np.ndarray]:
    """How the NLL [S, N, T] (``plain_nll``) rises at true switches and decays after them.

    ``aligned`` [S, O]: the mean NLL ``o`` steps after a switch for each of ``offsets``;
    ``nll_at_switch``, ``peak_within_10`` (the highest of offsets 0..10), ``nll_elsewhere``
    (steps more than 20 after the last boundary and more than 2 before the next one) and
    ``spike`` (peak - elsewhere) [S].
    """
    nll, true = np.asarray(nll), np.asarray(true)
    switch = true & ~np.asarray(start)
    offsets = np.asarray(offsets)
    t = np.arange(nll.shape[-1])
    aligned = []
    for o in offsets:
        valid = switch & (t + o >= 0) & (t + o < t.size)
        aligned.append((np.roll(nll, -o, axis=-1) * valid).sum((1, 2)) / valid.sum((1, 2)))
    aligned = np.stack(aligned, axis=1)
    last = np.maximum.accumulate(np.where(true, t, 0), axis=-1)
    following = np.flip(np.minimum.accumulate(np.flip(np.where(true, t, 10**9), -1), -1), -1)
    elsewhere = ((t - last) > 20) & ((np.roll(following, -1, -1) - t) > 2)
    base = (nll * elsewhere).sum((1, 2)) / elsewhere.sum((1, 2))
    peak = aligned[:, offsets >= 0][:, :11].max(1)
    return {
        "aligned": aligned,
        "nll_at_switch": aligned[:, offsets == 0][:, 0],
        "peak_within_10": peak,
        "nll_elsewhere": base,
        "spike": peak - base,
    }


def recall_by_switch(
    detected: np.ndarray,
    true: np.ndarray,
    start: np.ndarray,
    behaviour: np.ndarray,
    tolerance: int,
) -> list[dict[str, Any]]:
    """Recall per kind of switch (behaviour ``from`` -> ``to``) of boundaries [S, N, T]: the
    fraction of those switches with a detected boundary within ``tolerance`` steps, per seed.

    One entry per kind that occurs: ``{"from", "to", "count", "recall": [S]}``.
    """
    detected, now = np.asarray(detected), np.asarray(behaviour)
    switch = np.asarray(true) & ~np.asarray(start)
    near = detected.copy()
    for o in range(1, tolerance + 1):
        near[..., o:] |= detected[..., :-o]
        near[..., :-o] |= detected[..., o:]
    before = np.concatenate([now[..., :1], now[..., :-1]], axis=-1)
    kinds = []
    for i in range(int(now.max()) + 1):
        for j in range(int(now.max()) + 1):
            kind = switch & (before == i) & (now == j)
            if i != j and kind.any():
                recall = (near & kind).sum((1, 2)) / np.maximum(kind.sum((1, 2)), 1)
                kinds.append({"from": i, "to": j, "count": int(kind.sum()), "recall": recall})
    return kinds


def score_switches(
    model: ActionModel,
    params: Mapping[str, Any],
    obs: Mapping[str, jax.Array],
    action: jax.Array,
    start: jax.Array,
    true: jax.Array,
    behaviour: jax.Array,
    boundary: BoundaryConfig,
    gaps: Sequence[float],
    tolerances: Sequence[int],
    keys: jax.Array,
    fixed_lengths: Sequence[int],
    random_rates: Sequence[float],
    offsets: Sequence[int] = tuple(range(-10, 31)),
) -> tuple[dict[str, Any], dict[str, Segmentation]]:
    """Demonstrations whose behaviour (int [S, N, T]) switches at known steps (``true``),
    segmented under each view of their observations ({view: [S, N, T, ...]}, the action model
    ``params`` of each) over a sweep of ``gaps`` and at ``boundary``'s gap, and scored.

    Per-seed scores: ``by_tolerance`` {tolerance: ``detection_scores``, with the chosen gap's
    under ``chosen``}; ``around`` {view: ``nll_around_switches`` at ``offsets``, less ``aligned``},
    ``aligned`` {view: its ``aligned`` [S, O]} and ``offsets``;
    ``recall_by_switch`` of the first view at the tightest tolerance. Also returns the
    segmentations at the chosen gap {view: ``Segmentation`` [S, N, T]}.
    """
    sweep = stack_configs([boundary.replace(gap=g) for g in gaps])
    views = lambda fn, c: {v: fn(model, params[v], o, action, start, c) for v, o in obs.items()}
    swept, chosen = views(sweep_boundaries, sweep), views(segment_seeds, boundary)
    cuts = {view: s.boundary for view, s in chosen.items()}
    scores = {
        str(tol): detection_scores(
            swept, true, start, keys, tol, fixed_lengths, random_rates, chosen=cuts
        )
        for tol in tolerances
    }
    nll = {v: plain_nll(model, params[v], o, action, start) for v, o in obs.items()}
    first = np.asarray(cuts[next(iter(obs))])
    around = {v: nll_around_switches(x, true, start, offsets) for v, x in nll.items()}
    return {
        "by_tolerance": scores,
        "offsets": list(offsets),
        "aligned": {v: a["aligned"] for v, a in around.items()},
        "around": {v: {k: x for k, x in a.items() if k != "aligned"} for v, a in around.items()},
        "recall_by_switch": recall_by_switch(first, true, start, behaviour, min(tolerances)),
    }, chosen


@functools.partial(jax.jit, static_argnums=(0, 1))
def train_goal_policies(
    config: GoalPolicyConfig,
    action_space: spaces.Space,
    demos: Any,
    ends: jax.Array,
    keys: jax.Array,
) -> Any:
    """Goal-conditioned policies (hindsight goals) of each seed's ``demos`` [S, N, T, ...] (a
    ``Transition`` or anything with ``obs``, ``action`` and ``next_obs``) under each of V
    segmentations (``ends`` int32 [S, V, N, T], ``skills.segments.segment_end``), in
    one program: params [S, V, ...] for ``skills.policies.goal_policy``."""

    def one(key, obs, action, next_obs, end):
        agent = make_goal_policy(config, action_space, GoalData(obs, action, next_obs, end))
        return agent.policy_params(agent.train(key)[0])

    per_seed = lambda key, o, a, n, e: jax.vmap(lambda k, e: one(k, o, a, n, e))(
        jax.random.split(key, e.shape[0]), e
    )
    return jax.vmap(per_seed)(keys, demos.obs, demos.action, demos.next_obs, ends)
