"""Switching demonstrations: several policies take turns acting in one env at known random times,
and skill-boundary detection scored on them.

The ground truth for skill-boundary detection on any environment: a schedule of behaviour ids
(``switch_schedule``: segments of uniform random length, each next behaviour another one) picks
which actor acts at each step; the rollout records the transitions, the acting behaviour and the
true boundaries. Actors are ``(agents.core.Policy, params)`` pairs acting in the env's units.
``detect_switches`` runs the whole SBD pipeline on such demonstrations for all seeds at once.

    schedule = switch_schedule(key, 1000, num_behaviours=3, min_len=60, max_len=200)
    demos = switching_rollout(key, env, env_params, actors, schedule, info_keys=("height",))
    demos = switching_demos(key, env, env_params, actors, 64, 1000, 60, 200)     # [64, 1000]
    keys = {stage: jax.random.split(jax.random.key(i), 5) for i, stage in enumerate(STAGES)}
    run = detect_switches(SwitchingConfig(), env, env_params, actors, keys)       # 5 seeds
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agents.core import Policy
from agents.hparams import require
from agents.replay import Transition
from skills import sbd
from skills.action_model import ActionModel, ActionModelConfig, episode_starts
from skills.boundary import BoundaryConfig, Segmentation

__all__ = [
    "STAGES",
    "Demos",
    "SwitchRun",
    "SwitchingConfig",
    "behaviour_stats",
    "detect_switches",
    "switch_schedule",
    "switching_demos",
    "switching_rollout",
]

Actor = tuple[Policy, Any]  # a policy and its parameters


class Demos(NamedTuple):
    """Switching demonstrations, one trajectory [T] (or a batch [..., T])."""

    transitions: Transition  # obs [T, D], action [T, A], reward, next_obs, terminated, truncated
    behaviour: jax.Array  # int32 [T]: the behaviour acting at t
    boundary: jax.Array  # bool [T]: t opens a behaviour segment (t = 0 and every switch)
    info: dict[str, jax.Array]  # float32 [T] per recorded ``info`` entry


def switch_schedule(
    key: jax.Array, steps: int, num_behaviours: int, min_len: int, max_len: int
) -> jax.Array:
    """int32 [steps]: behaviour ids in segments of uniform length in [min_len, max_len].

    The first behaviour is uniform, each next one uniform among the others.
    """
    require(
        1 <= min_len <= max_len and num_behaviours >= 1,
        f"switch_schedule: need 1 <= min_len={min_len} <= max_len={max_len} and "
        f"num_behaviours={num_behaviours} >= 1",
    )
    k_len, k_first, k_next = jax.random.split(key, 3)
    num = steps // min_len + 1  # enough segments to cover ``steps``
    ends = jnp.cumsum(jax.random.randint(k_len, (num,), min_len, max_len + 1))
    offsets = jax.random.randint(k_next, (num - 1,), 1, num_behaviours)  # never 0: a real switch
    first = jax.random.randint(k_first, (), 0, num_behaviours)
    ids = (first + jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(offsets)])) % num_behaviours
    segment = jnp.searchsorted(ends, jnp.arange(steps), side="right")
    return ids[segment].astype(jnp.int32)


def switching_rollout(
    key: jax.Array,
    env: Any,
    env_params: Any,
    actors: Sequence[Actor],
    behaviour: jax.Array,
    deterministic: bool = False,
    info_keys: Sequence[str] = (),
) -> Demos:
    """One trajectory in which ``actors[behaviour[t]]`` acts at t (``behaviour`` int32 [T]).

    Every actor acts at every step (each keeps its own carry) and the scheduled one's action is
    taken; the ``info`` entries named in ``info_keys`` are recorded.
    """
    require(len(actors) >= 1, "switching_rollout: needs at least one (policy, params) actor")
    key_reset, key_run = jax.random.split(key)
    obs, state = env.reset(key_reset, env_params)
    carries = tuple(policy.initial_carry(1) for policy, _ in actors)

    def step(carry, inputs):
        obs, state, carries = carry
        b, key = inputs
        k_act, k_env = jax.random.split(key)
        acted = [
            policy.act(params, c, obs[None], k_act, deterministic)
            for (policy, params), c in zip(actors, carries)
        ]
        carries = tuple(c for c, _ in acted)
        action = jnp.stack([a[0] for _, a in acted])[b]
        next_obs, state, reward, terminated, truncated, info = env.step(
            k_env, state, action, env_params
        )
        transition = Transition(
            obs,
            action,
            reward.astype(jnp.float32),
            info["final_observation"].astype(jnp.float32),
            terminated.astype(bool),
            truncated.astype(bool),
        )
        recorded = {k: jnp.asarray(info[k], jnp.float32) for k in info_keys}
        return (next_obs, state, carries), (transition, recorded)

    steps = behaviour.shape[0]
    inputs = (behaviour, jax.random.split(key_run, steps))
    _, (transitions, recorded) = jax.lax.scan(step, (obs, state, carries), inputs)
    t = jnp.arange(steps)
    switch = (t == 0) | (behaviour != jnp.roll(behaviour, 1))
    return Demos(transitions, behaviour, switch, recorded)


def switching_demos(
    key: jax.Array,
    env: Any,
    env_params: Any,
    actors: Sequence[Actor],
    num: int,
    steps: int,
    min_len: int,
    max_len: int,
    deterministic: bool = False,
    info_keys: Sequence[str] = (),
) -> Demos:
    """``num`` switching trajectories of ``steps`` steps [num, steps], schedules drawn here."""
    k_schedule, k_run = jax.random.split(key)
    schedule = jax.vmap(lambda k: switch_schedule(k, steps, len(actors), min_len, max_len))(
        jax.random.split(k_schedule, num)
    )
    run = lambda k, b: switching_rollout(k, env, env_params, actors, b, deterministic, info_keys)
    return jax.vmap(run)(jax.random.split(k_run, num), schedule)


def behaviour_stats(
    key: jax.Array,
    env: Any,
    env_params: Sequence[Any],
    actors: Sequence[Actor],
    episodes: int,
    info_keys: Sequence[str] = (),
) -> list[dict[str, float]]:
    """Each actor alone on its own task (``env_params[i]``, e.g. its reward), greedy, for
    ``episodes`` whole episodes: its mean return and the mean of each recorded ``info`` entry.

    All actors run in one program (every one acts at every step; each task's own is taken).
    """
    require(
        len(env_params) == len(actors) >= 1,
        f"behaviour_stats: one env_params per actor, got {len(env_params)} for {len(actors)}",
    )
    lengths = {int(p.max_steps_in_episode) for p in env_params}
    require(len(lengths) == 1, f"behaviour_stats: episode lengths differ: {sorted(lengths)}")
    (steps,) = lengths
    alone = lambda b: jnp.full(steps, b, jnp.int32)
    tasks = jax.tree.map(lambda *x: jnp.stack(x), *env_params)

    def task(b, params):
        run = lambda k: switching_rollout(k, env, params, actors, alone(b), True, info_keys)
        return jax.vmap(run)(jax.random.split(key, episodes))

    demos = jax.jit(jax.vmap(task))(jnp.arange(len(actors)), tasks)
    returns = demos.transitions.reward.sum(-1).mean(-1)  # [actors]
    means = {k: v.mean((1, 2)) for k, v in demos.info.items()}
    return [
        {"return": float(returns[i]), **{k: float(v[i]) for k, v in means.items()}}
        for i in range(len(actors))
    ]


#: the stages of ``detect_switches`` that draw randomness, each given its own [S] seed keys
STAGES = ("demos", "action_model", "baselines")


@dataclasses.dataclass
class SwitchingConfig:
    """Switching demonstrations and SBD on them (defaults: HalfCheetah's three behaviours at CPU
    scale; the gap of 12 nats was chosen on a pilot with other seeds)."""

    num_demos: int = 64  # trajectories per seed
    demo_steps: int = 1000  # steps per trajectory (one episode)
    min_segment: int = 60  # behaviour segment lengths, uniform in [min_segment, max_segment]
    max_segment: int = 200
    deterministic: bool = False  # demonstrators act with tanh(mean) instead of sampling
    model: ActionModelConfig = dataclasses.field(
        default_factory=lambda: ActionModelConfig(
            embed=(64,), gru_hidden=64, head=(64,), total_steps=400, batch_size=16, lr=3e-3
        )
    )
    train_window: int = 200  # the action model trains on windows of this many steps
    boundary: BoundaryConfig = dataclasses.field(
        default_factory=lambda: BoundaryConfig(gap=12.0, min_len=2, max_len=10_000)
    )
    gaps: tuple[float, ...] = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0)
    tolerances: tuple[int, ...] = (2, 5)
    fixed_lengths: tuple[int, ...] = (5, 10, 20, 30, 40, 60, 80, 100, 120, 140, 160, 200)
    random_rates: tuple[float, ...] = (0.002, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.2)

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        windows = self.num_demos * self.demo_steps // self.train_window
        segments, window = f"[{self.min_segment}, {self.max_segment}]", self.train_window
        require(self.num_demos >= 1, f"num_demos must be >= 1, got {self.num_demos}")
        require(
            1 <= self.min_segment <= self.max_segment,
            f"segment lengths {segments} must satisfy 1 <= min_segment <= max_segment",
        )
        require(
            self.demo_steps % window == 0,
            f"demo_steps={self.demo_steps} must be a multiple of train_window={window}",
        )
        require(
            self.model.batch_size <= windows,
            f"model.batch_size={self.model.batch_size} exceeds the {windows} training windows",
        )
        self.model.validate()
        self.boundary.validate()


class SwitchRun(NamedTuple):
    """What ``detect_switches`` measured, per seed (leading axis S)."""

    demos: Demos  # [S, N, T]
    start: jax.Array  # bool [S, N, T]: episode starts
    scores: dict[str, Any]  # ``skills.sbd.score_switches``'s, views "hidden" and "revealed"
    chosen: dict[str, Segmentation]  # {view: [S, N, T]} at the config's gap
    model: ActionModel
    params: dict[str, Any]  # {view: action-model params [S, ...]}
    loss: dict[str, np.ndarray]  # {view: [S, total_steps]}


def detect_switches(
    config: SwitchingConfig,
    env: Any,
    env_params: Any,
    actors: Sequence[Actor],
    keys: Mapping[str, jax.Array],
    info_keys: Sequence[str] = (),
    lap: Callable[[str], Any] | None = None,
) -> SwitchRun:
    """Switching demonstrations of ``actors``, unconditional action models trained on windows
    of them, SBD over a sweep of the gap with the fixed-length and random baselines, scored
    against the true switches, for S seeds in one program each stage (``keys``: {stage: [S]}
    for every one of ``STAGES``). The negative control "revealed" sees the acting behaviour's
    one-hot in the observation. ``lap(stage_s)`` is called as each stage ends."""
    config.validate()
    require(len(actors) >= 2, f"switching needs at least two actors, got {len(actors)}")
    sbd.check_stage_keys(keys, STAGES, "detect_switches")
    lap = lap or (lambda stage: None)
    schedule = (config.num_demos, config.demo_steps, config.min_segment, config.max_segment)
    demos_of = lambda k: switching_demos(
        k, env, env_params, actors, *schedule, config.deterministic, info_keys
    )
    demos = jax.block_until_ready(jax.jit(jax.vmap(demos_of))(keys["demos"]))  # [S, N, T]
    lap("demos_s")
    data, true, behaviour = demos.transitions, demos.boundary, demos.behaviour
    revealed = jnp.concatenate([data.obs, jax.nn.one_hot(behaviour, len(actors))], axis=-1)
    obs = {"hidden": data.obs, "revealed": revealed}
    start = episode_starts(data.terminated, data.truncated)  # [S, N, T]

    window = config.train_window  # [S, N, T, ...] -> [S, N * T / W, W, ...]
    cut = lambda x: x.reshape(x.shape[0], -1, window, *x.shape[3:])
    model, params, loss = sbd.action_models(
        config.model, env.action_space(env_params), jax.tree.map(cut, data),
        {view: cut(o) for view, o in obs.items()}, keys["action_model"],
    )  # fmt: skip
    lap("action_model_s")

    scores, chosen = sbd.score_switches(
        model, params, obs, data.action, start, true, behaviour, config.boundary, config.gaps,
        config.tolerances, keys["baselines"], config.fixed_lengths, config.random_rates,
    )  # fmt: skip
    lap("segmentation_s")
    return SwitchRun(demos, start, scores, chosen, model, params, loss)
