"""Run any ``init``/``update`` learner over many seeds in one vmapped program, in chunks.

A run writes one folder: ``config.json``, ``metrics.jsonl`` (one line per update, per-seed
values), ``checkpoints/`` (orbax, one per chunk), PNG plots and ``summary.md``. Stopping a
run and starting it again with the same folder resumes from its last checkpoint and reaches
the same final state as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from agents.checkpoint import Checkpointer


def iqm_ci(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Interquartile mean of ``values`` [num_seeds] with a 95% stratified-bootstrap CI (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    values = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    point, ci = rly.get_interval_estimates(
        {"x": values}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
    )
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])


def fmt_ci(ci: tuple[float, float, float] | list[float], digits: int = 2) -> str:
    """An ``iqm_ci`` result as ``point [lo, hi]``."""
    return f"{ci[0]:.{digits}f} [{ci[1]:.{digits}f}, {ci[2]:.{digits}f}]"


def final_score(returns: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Per-seed mean of the last ``fraction`` of a [num_seeds, num_updates] curve (NaNs skipped)."""
    k = max(1, int(returns.shape[1] * fraction))
    with warnings.catch_warnings():  # all-NaN seeds (no episode ended) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(returns[:, -k:], axis=1)


class RunFolder:
    """The files of one run: config, metrics log, checkpoints, plots and summary."""

    def __init__(self, path: str | Path, config: Mapping[str, Any]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        config_file = self.path / "config.json"
        if not config_file.exists():
            config_file.write_text(json.dumps(self.config, indent=2, sort_keys=True))
        self.metrics_file = self.path / "metrics.jsonl"

    def read_metrics(self, upto: int | None = None) -> list[dict]:
        """Metric lines with ``update < upto`` (all when None)."""
        if not self.metrics_file.exists():
            return []
        lines = [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line]
        return [m for m in lines if upto is None or m["update"] < upto]

    def rewrite_metrics(self, lines: list[dict]) -> None:
        tmp = self.metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in lines))
        tmp.replace(self.metrics_file)

    def append_metrics(self, lines: list[dict]) -> None:
        with self.metrics_file.open("a") as f:
            f.writelines(json.dumps(m) + "\n" for m in lines)


def _to_lines(
    metrics: dict[str, np.ndarray], first_update: int, steps_per_update: int
) -> list[dict]:
    """[S, N] metric arrays -> one JSON line per update with per-seed lists (NaN -> null)."""
    n = next(iter(metrics.values())).shape[1]
    lines = []
    for i in range(n):
        line = {"update": first_update + i, "env_steps": (first_update + i + 1) * steps_per_update}
        for k, v in metrics.items():
            line[k] = [None if not math.isfinite(x) else float(x) for x in v[:, i]]
        lines.append(line)
    return lines


def run_chunked(
    init: Callable[[jax.Array], Any],
    update: Callable[[Any], tuple[Any, dict]],
    num_updates: int,
    steps_per_update: int,
    key: jax.Array,
    num_seeds: int,
    folder: RunFolder,
    updates_per_chunk: int = 50,
    progress: bool = True,
) -> tuple[Any, dict[str, np.ndarray], dict[str, float]]:
    """Train ``num_seeds`` seeds with vmapped ``update`` for ``num_updates`` updates, resumably.

    Returns (final batched state, metrics {name: [num_seeds, num_updates]}, timing figures).
    """
    if num_seeds < 1 or updates_per_chunk < 1:
        raise ValueError("num_seeds and updates_per_chunk must be >= 1")
    keys = jax.random.split(key, num_seeds)
    t0 = time.perf_counter()
    state = jax.jit(jax.vmap(init))(keys)
    ckpt = Checkpointer(folder.path / "checkpoints", folder.config)
    done = ckpt.latest_step() or 0
    if done:
        state = ckpt.restore(state, done)
        folder.rewrite_metrics(folder.read_metrics(upto=done))  # drop lines past the checkpoint
    else:
        folder.rewrite_metrics([])

    def chunk_fn(n):
        body = lambda s, _: update(s)
        return jax.jit(jax.vmap(lambda s: jax.lax.scan(body, s, None, n)))

    chunk = chunk_fn(min(updates_per_chunk, num_updates))
    compiled, compile_s = {}, 0.0
    bar = tqdm(
        total=num_updates * steps_per_update,
        initial=done * steps_per_update,
        unit="step",
        unit_scale=True,
        disable=not progress,
        desc="env steps/seed",
    )
    run_s, last_return = 0.0, float("nan")
    while done < num_updates:
        n = min(updates_per_chunk, num_updates - done)
        if n not in compiled:
            tc = time.perf_counter()
            compiled[n] = (chunk if n == updates_per_chunk else chunk_fn(n)).lower(state).compile()
            compile_s += time.perf_counter() - tc
        tr = time.perf_counter()
        state, metrics = jax.block_until_ready(compiled[n](state))
        run_s += time.perf_counter() - tr
        metrics = jax.tree.map(np.asarray, metrics)
        folder.append_metrics(_to_lines(metrics, done, steps_per_update))
        done += n
        ckpt.save(done, state)
        if "return" in metrics and np.isfinite(metrics["return"]).any():
            last_return = float(np.nanmean(metrics["return"][:, -max(1, n // 10) :]))
        bar.update(n * steps_per_update)
        bar.set_postfix(
            steps_per_s=f"{num_seeds * done * steps_per_update / max(run_s, 1e-9):,.0f}",
            ret=f"{last_return:.2f}",
        )
    bar.close()
    lines = folder.read_metrics()
    names = [k for k in lines[0] if k not in ("update", "env_steps")] if lines else []
    metrics = {
        k: np.array([[np.nan if v is None else v for v in m[k]] for m in lines]).T for k in names
    }
    timing = {
        "wall_s": time.perf_counter() - t0,
        "compile_s": compile_s,
        "run_s": run_s,
        "env_steps_per_s": num_seeds * num_updates * steps_per_update / max(run_s, 1e-9),
    }
    return state, metrics, timing


def plot_curves(
    path: Path, env_steps: np.ndarray, curves: Mapping[str, np.ndarray], ylabel: str, title: str
) -> None:
    """PNG of IQM across seeds (line) with the 25-75% band, for each named [S, N] curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, y in curves.items():
        y = _ffill(y)
        iqm = stats.trim_mean(y, 0.25, axis=0)
        lo, hi = np.nanpercentile(y, [25, 75], axis=0)
        ax.plot(env_steps, iqm, label=f"{name} (IQM, {y.shape[0]} seeds)")
        ax.fill_between(env_steps, lo, hi, alpha=0.25)
    ax.set_xlabel("environment steps per seed")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ffill(y: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward along axis 1 (updates where no episode ended)."""
    y = np.array(y, dtype=np.float64)
    for row in y:
        last = np.nan
        for i, v in enumerate(row):
            last = v if np.isfinite(v) else last
            row[i] = last
    return y
