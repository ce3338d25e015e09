"""Metrics to TensorBoard and Weights & Biases, beside every run folder's ``metrics.jsonl``.

    python -m experiments.ppo --log tensorboard wandb      # any study: event files, W&B run

    with loggers.opened(["tensorboard"], "results/ppo", config):
        ...   # every RunFolder under results/ppo writes its metrics lines here too

A study opens the loggers its ``--log`` names; while they are open every metrics line a
``RunFolder`` writes (on the host, after each chunk: never inside jit) also goes to them. Per-seed
values are logged as their mean over finite seeds (``name``) and each seed (``name/seed_i``);
vectors per seed (a return matrix row, per-task scores) as the mean per entry (``name/j``).
TensorBoard: event files in ``<out>/tensorboard/<sub-run>`` (``tensorboard --logdir <out>``).
W&B: one run per study in ``<out>/wandb``, offline unless ``WANDB_MODE`` says otherwise (``wandb
sync <out>/wandb/offline-run-*`` uploads it later), each sub-run's metrics under ``<sub-run>/``
with its own step axis.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import jax
import numpy as np

__all__ = ["KINDS", "Logger", "TensorBoard", "WandB", "log", "opened", "points", "scalars"]

Kind = Literal["tensorboard", "wandb"]
KINDS: tuple[str, ...] = ("tensorboard", "wandb")


class Logger(Protocol):
    """Where metrics lines go besides the run folder: ``points`` are (stage, step, scalars)."""

    def log(self, run: str, points: Sequence[tuple[str, int, dict[str, float]]]) -> None: ...

    def close(self) -> None: ...


def scalars(line: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of one metrics line as scalars (see the module docstring)."""
    out = {}
    for name, value in line.items():
        if isinstance(value, str):
            continue
        try:
            x = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            continue  # ragged: not a metric
        if x.ndim == 0:
            out[name] = float(x)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column of diverged seeds
            mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        if x.ndim == 1:
            out[name] = float(mean)
            out |= {f"{name}/seed_{i}": float(v) for i, v in enumerate(x)}
        else:
            out |= {f"{name}/{j}": float(v) for j, v in enumerate(np.ravel(mean))}
    return out


def points(lines: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, dict[str, float]]]:
    """(stage, step, scalars) of metrics lines. A line's first field after ``stage`` is its step;
    a non-integer one (a swept gap) stays a metric and the line's place in its stage is the step."""
    out, count = [], {}
    for line in lines:
        stage = str(line.get("stage", ""))
        fields = {k: v for k, v in line.items() if k != "stage"}
        first = next(iter(fields), None)
        place = count[stage] = count.get(stage, -1) + 1
        value = fields.get(first)
        if isinstance(value, int) and not isinstance(value, bool):
            fields.pop(first)
            out.append((stage, value, scalars(fields)))
        else:
            out.append((stage, place, scalars(fields)))
    return out


class TensorBoard:
    """Event files under ``root/tensorboard/<run>[/<stage>]`` (one writer each)."""

    def __init__(self, root: Path):
        from tensorboardX import SummaryWriter  # the optional ``log`` extra

        self._writer, self.root = SummaryWriter, root / "tensorboard"
        self.writers: dict[str, Any] = {}

    def log(self, run: str, points: Sequence[tuple[str, int, dict[str, float]]]) -> None:
        for stage, step, values in points:
            name = "/".join(p for p in (run, stage) if p) or "main"
            if name not in self.writers:
                self.writers[name] = self._writer(str(self.root / name))
            for k, v in values.items():
                self.writers[name].add_scalar(k, v, step)
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class WandB:
    """One W&B run per study (offline by default), a step axis per sub-run and stage."""

    def __init__(self, root: Path, name: str, config: Mapping[str, Any]):
        import wandb  # the optional ``log`` extra

        (root / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "skill-agents"), name=name, dir=str(root),
            config=dict(config), mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",
        )  # fmt: skip
        self.axes: set[str] = set()

    def log(self, run: str, points: Sequence[tuple[str, int, dict[str, float]]]) -> None:
        for stage, step, values in points:
            prefix = "".join(f"{p}/" for p in (run, stage) if p)
            axis = f"{prefix}step"
            if axis not in self.axes:
                self.run.define_metric(axis)
                self.run.define_metric(f"{prefix}*", step_metric=axis)
                self.axes.add(axis)
            self.run.log({**{f"{prefix}{k}": v for k, v in values.items()}, axis: step})

    def close(self) -> None:
        self.run.finish()


_ACTIVE: list[tuple[Path, Logger]] = []


def log(path: str | Path, lines: Sequence[Mapping[str, Any]]) -> None:
    """Send the metrics lines of the run folder ``path`` to the open loggers of its study."""
    if not _ACTIVE or not lines:
        return
    path = Path(path).resolve()
    for root, logger in _ACTIVE:
        if path == root or root in path.parents:
            run = path.relative_to(root).as_posix()
            logger.log("" if run == "." else run, points(lines))


@contextlib.contextmanager
def opened(kinds: Sequence[str], root: str | Path, config: Mapping[str, Any]) -> Iterator[None]:
    """Loggers of ``kinds`` for the study folder ``root`` while the block runs (on several
    hosts, only process 0 logs, as only it writes the run folder)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown logger(s) {sorted(unknown)}; choose from {list(KINDS)}")
    root = Path(root).resolve()
    made: list[Logger] = []
    try:
        for kind in dict.fromkeys(kinds) if jax.process_index() == 0 else ():
            try:
                made.append(
                    TensorBoard(root) if kind == "tensorboard" else WandB(root, root.name, config)
                )
            except ImportError as e:
                raise ImportError(
                    f"--log {kind} needs {e.name}: pip install -e '.[log]' (or pip install "
                    f"{e.name})"
                ) from e
        _ACTIVE.extend((root, m) for m in made)
        yield
    finally:
        for m in made:
            _ACTIVE.remove(next(a for a in _ACTIVE if a[1] is m))
            m.close()
