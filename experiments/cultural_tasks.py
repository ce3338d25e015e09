"""What the cultural-accumulation studies share: the two social tasks and the study scaffolding.

``MemoryTask`` and ``GoalTask`` are the CLI-visible task settings of Memory Sequence and Goal
Sequence with a social channel (``envs.gridworlds.social``); each builds the social learner's
env, the RL^2 baseline's env, the in-weights env and a random demonstration. The rest is the
scaffolding both experiment CLIs use: the run's ``config.json``, PPO training in a resumable
run folder, per-generation timing, IQM plots and table cells.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agents.hparams import to_dict
from agents.ppo import PPOConfig, make_ppo
from envs.gridworlds.goal_sequence import NUM_ACTIONS
from envs.gridworlds.memory_sequence import MemorySequence
from envs.gridworlds.social import SocialGoalSequence, SocialMemorySequence, demo_spec
from experiments.runner import RunFolder, iqm_ci, run_chunked

__all__ = [
    "GoalTask",
    "MemoryTask",
    "StudyArgs",
    "generation_timer",
    "plot_iqm",
    "train_ppo",
    "write_config",
]


@dataclasses.dataclass
class MemoryTask:
    """Memory Sequence: reproduce a hidden symbol sequence; the demonstrator's symbol is shown."""

    num_symbols: int = 3
    seq_len: int = 6

    name = "Memory Sequence"

    def social(self, num_trials: int, **social: Any) -> tuple[SocialMemorySequence, Any]:
        """The in-context social learner's env: a new sequence each episode, visibility
        decaying over the trials (unless ``social`` says otherwise)."""
        env = SocialMemorySequence()
        return env, env.in_context_params(self.num_symbols, self.seq_len, num_trials, **social)

    def rl2(self, num_trials: int) -> tuple[MemorySequence, Any]:
        """RL^2's env: plain Memory Sequence (no social channel)."""
        return MemorySequence(), MemorySequence.in_context_params(
            self.num_symbols, self.seq_len, num_trials
        )

    def in_weights(self, demos: jax.Array) -> tuple[SocialMemorySequence, Any]:
        """One fixed sequence, one trial, recorded demonstrators."""
        env = SocialMemorySequence()
        return env, env.in_weights_params(0, self.num_symbols, self.seq_len, demos=demos)

    def draw_tasks(self, key: jax.Array, shape: tuple[int, ...], params: Any) -> jax.Array:
        """Task instances: sequences int32 [*shape, seq_len]."""
        return jax.random.randint(key, shape + (self.seq_len,), 0, self.num_symbols)

    def random_demos(self, key: jax.Array, shape: tuple[int, ...], params: Any) -> jax.Array:
        """Random symbols, int32 [*shape, seq_len]: what generation 0 watches."""
        return jax.random.randint(key, shape + (self.seq_len,), 0, self.num_symbols)

    def describe(self) -> str:
        return f"{self.num_symbols} symbols, length {self.seq_len}"


@dataclasses.dataclass
class GoalTask:
    """Goal Sequence: visit goals in a hidden order; the demonstrator's body is shown."""

    size: int = 4  # CPU scale (the reference: 7x7, 50 steps per trial)
    num_goals: int = 3
    trial_length: int = 16
    view_size: int = 5
    oracle_accuracy: float = 0.8  # the noisy oracle's unscrambled moves (reference: 80%)

    name = "Goal Sequence"

    def _kwargs(self) -> dict[str, Any]:
        return dict(
            size=self.size,
            num_goals=self.num_goals,
            trial_length=self.trial_length,
            view_size=self.view_size,
            oracle_accuracy=self.oracle_accuracy,
        )

    def social(self, num_trials: int, **social: Any) -> tuple[SocialGoalSequence, Any]:
        """The in-context social learner's env: a new layout each episode, visibility
        decaying over the trials (unless ``social`` says otherwise)."""
        env = SocialGoalSequence()
        return env, env.in_context_params(num_trials, **{**self._kwargs(), **social})

    def rl2(self, num_trials: int) -> tuple[SocialGoalSequence, Any]:
        """RL^2's env: the social env with the demonstrator never visible (its channel is
        constant zero; it stands still, which spares the oracle's planning), which also lets
        a task instance be fixed for whole lifetimes."""
        still = jnp.full((1, self.trial_length), NUM_ACTIONS, jnp.int32)
        return self.social(num_trials, visibility=0.0, visibility_decay=False, demos=still)

    def in_weights(self, demos: jax.Array) -> tuple[SocialGoalSequence, Any]:
        """One fixed layout, one trial, recorded demonstrators."""
        env = SocialGoalSequence()
        return env, env.in_weights_params(0, **self._kwargs(), demos=demos)

    def draw_tasks(self, key: jax.Array, shape: tuple[int, ...], params: Any) -> Any:
        """Task instances: initial states (layout, start, order), batched [*shape]."""
        keys = jax.random.split(key, int(np.prod(shape)))
        states = jax.vmap(SocialGoalSequence.draw_task, in_axes=(0, None))(keys, params)
        return jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), states)

    def random_demos(self, key: jax.Array, shape: tuple[int, ...], params: Any) -> jax.Array:
        """Random moves, int32 [*shape, trial_length]: what generation 0 watches."""
        return jax.random.randint(key, shape + (demo_spec(params)[0],), 0, NUM_ACTIONS)

    def describe(self) -> str:
        return (
            f"{self.size}x{self.size}, {self.num_goals} goals, {self.trial_length} steps per trial"
        )


@dataclasses.dataclass
class StudyArgs:
    """Fields every cultural study has (the task's settings come with each subcommand)."""

    out: str = "results/cultural"  # an existing folder is resumed
    seeds: int = 5
    seed: int = 0
    progress: bool = True


def write_config(out: Path, experiment: str, args: Any, drop: tuple[str, ...] = ()) -> dict:
    """Write ``out/config.json``: the args that decide results (not ``out``, ``progress`` or
    ``drop``), nested dataclasses flattened into the top level as before."""
    out.mkdir(parents=True, exist_ok=True)
    config = {"experiment": experiment}
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if f.name in ("out", "progress", *drop):
            continue
        if isinstance(value, PPOConfig):
            config[f.name] = to_dict(value)
        elif dataclasses.is_dataclass(value):
            config.update(dataclasses.asdict(value))
        else:
            config[f.name] = list(value) if isinstance(value, tuple) else value
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return config


def train_ppo(
    folder: Path,
    config: dict,
    ppo_config: PPOConfig,
    env: Any,
    env_params: Any,
    key: jax.Array,
    seeds: int,
    updates_per_chunk: int = 50,
    progress: bool = True,
) -> tuple[Any, Any, np.ndarray, dict]:
    """Recurrent PPO on ``env`` over ``seeds`` seeds in a resumable run folder:
    (policy, params [S], training return [S, num_updates], timing)."""
    ppo = make_ppo(ppo_config, env, env_params)
    state, metrics, timing = run_chunked(
        ppo.init,
        ppo.update,
        ppo_config.num_updates,
        ppo_config.batch_size,
        key,
        seeds,
        RunFolder(folder, config),
        updates_per_chunk,
        progress,
    )
    return ppo.policy, state.train_state.params, metrics["return"], timing


def generation_timer() -> tuple[list[float], Any]:
    """(stamps, tick): call ``tick()`` after each generation; ``median_s(stamps)`` is the
    median time of the generations after the first (which compiles)."""
    stamps = [time.perf_counter()]
    return stamps, lambda: stamps.append(time.perf_counter())


def median_s(stamps: list[float]) -> float:
    """Median seconds per generation after the first; NaN when fewer ran (a resumed run)."""
    seconds = np.diff(stamps)[1:]
    return float(np.median(seconds)) if seconds.size else float("nan")


def plot_iqm(
    path: Path,
    x: np.ndarray,
    curves: Mapping[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    title: str,
    hlines: Mapping[str, tuple[float, float, float]] | None = None,
) -> None:
    """PNG of the IQM (line) and 95% bootstrap CI (band) over seeds of each [S, N] curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, y in curves.items():
        stats = np.array([iqm_ci(y[:, i], reps=500) for i in range(y.shape[1])])
        (line,) = ax.plot(x, stats[:, 0], marker="o", ms=3, label=f"{name} ({y.shape[0]} seeds)")
        ax.fill_between(x, stats[:, 1], stats[:, 2], alpha=0.2, color=line.get_color())
    for i, (name, (point, lo, hi)) in enumerate((hlines or {}).items()):
        colour = f"C{len(curves) + i}"
        ax.axhline(point, ls="--", color=colour, label=name)
        ax.axhspan(lo, hi, alpha=0.12, color=colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
