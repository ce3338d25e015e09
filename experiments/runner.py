"""One resumable loop for every run: chunks of work, metrics lines, a checkpoint per chunk.

    folder = RunFolder("results/ppo", config)
    state, metrics, timing = run_chunked(agent, key, num_seeds, folder)   # any Agent, vmapped
    state, lines = run_loop(folder, state, step, total)                   # any chunked loop

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per step, per-seed values),
``checkpoints/`` (orbax, one per chunk), plots, ``results.json`` and ``summary.md``. Starting a
run again with the same folder resumes from its last checkpoint and reaches the same final state
as an uninterrupted run. Aggregates over seeds are interquartile means with 95% stratified
bootstrap confidence intervals (rliable).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from tqdm import tqdm

from agents.checkpoint import Checkpointer, write_atomic
from agents.core import Agent, DivergenceError, check_losses, diverging, seed_sharding
from agents.hparams import check_fits
from envs.platform import describe
from experiments import loggers

__all__ = [
    "ChunkClock",
    "DivergenceError",
    "FolderBusy",
    "Laps",
    "RunFolder",
    "final_score",
    "fmt_ci",
    "iqm",
    "iqm_ci",
    "lock_folder",
    "md_table",
    "run_chunked",
    "run_loop",
    "seed_sharding",
    "stored_results",
    "write_atomic",
]


class Laps:
    """Wall-clock seconds of consecutive stages: ``laps("demos_s")`` records, under that name in
    ``laps.timing``, the time since the previous lap (the first: since ``start``, default now)."""

    def __init__(self, start: float | None = None):
        self.timing: dict[str, float] = {}
        self._last = time.perf_counter() if start is None else start

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timing[stage], self._last = now - self._last, now


class ChunkClock:
    """An ``on_chunk`` for ``run_loop`` that notes when each chunk ends, then calls ``then``;
    ``median_s``: the median seconds per chunk after the first (which compiles), NaN if none."""

    def __init__(self, then: Callable[[int, int, dict], None] | None = None):
        self.then, self.stamps = then, [time.perf_counter()]

    def __call__(self, start: int, n: int, metrics: dict) -> None:
        self.stamps.append(time.perf_counter())
        if self.then is not None:
            self.then(start, n, metrics)

    @property
    def median_s(self) -> float:
        seconds = np.diff(self.stamps)[1:]
        return float(np.median(seconds)) if seconds.size else float("nan")


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all ``scores``: ``rliable.metrics.aggregate_iqm`` (scipy's
    ``trim_mean(scores, 0.25)``) without scipy's per-call overhead, which dominates bootstraps."""
    x = np.sort(np.asarray(scores, np.float64).ravel())
    cut = int(0.25 * x.size)
    return float(x[cut : x.size - cut].mean())


def iqm_ci(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Interquartile mean of ``values`` [num_seeds] with a 95% stratified-bootstrap CI (rliable)."""
    from rliable import library as rly

    values = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    point, ci = rly.get_interval_estimates({"x": values}, lambda x: np.array([iqm(x)]), reps=reps)
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])


def iqm_ci_columns(values: np.ndarray) -> list[tuple[float, float, float]]:
    """``iqm_ci`` of each column of ``values`` [num_seeds, K] (one interval per generation,
    trial or setting)."""
    return [iqm_ci(column) for column in np.asarray(values).T]


def fmt_ci(ci: tuple[float, float, float] | list[float], digits: int = 2) -> str:
    """An ``iqm_ci`` result as ``point [lo, hi]``."""
    return f"{ci[0]:.{digits}f} [{ci[1]:.{digits}f}, {ci[2]:.{digits}f}]"


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table (no final newline), short rows ending in blank cells; a cell that is an
    ``iqm_ci`` triple prints through ``fmt_ci``, any other through ``str``."""
    cell = lambda c: fmt_ci(c) if isinstance(c, tuple | list) and len(c) == 3 else str(c)

    def line(cells: Sequence[Any]) -> str:
        cells = [*map(cell, cells)] + [""] * (len(header) - len(cells))
        return "| " + " | ".join(cells) + " |"

    return "\n".join([line(header), "|---" * len(header) + "|", *map(line, rows)])


def final_score(returns: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Per-seed mean of the last ``fraction`` of a [num_seeds, num_updates] curve (NaNs skipped)."""
    k = max(1, int(returns.shape[1] * fraction))
    with warnings.catch_warnings():  # all-NaN seeds (no episode ended) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(returns[:, -k:], axis=1)


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class FolderBusy(RuntimeError):
    """Another process is running in a run folder."""


_LOCKS: dict[Path, list[int]] = {}  # run folders this process holds: {path: [fd, holders]}


def lock_folder(path: str | os.PathLike, holder: object) -> None:
    """Lock ``path/.lock`` for as long as ``holder`` lives (several holders in one process
    share it), or raise ``FolderBusy`` when another process holds it. A killed process's lock
    goes with it."""
    path = Path(path).absolute()
    if jax.process_index() != 0:  # several hosts: the first holds the lock and writes
        return
    if path not in _LOCKS:
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusy(
                f"another process (pid {pid}) is running in {path}; wait for it to finish, "
                "or give this run another output folder (--out)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _LOCKS[path] = [fd, 0]
    _LOCKS[path][1] += 1
    weakref.finalize(holder, _unlock, path)


def _unlock(path: Path) -> None:
    entry = _LOCKS.get(path)
    if entry is not None:
        entry[1] -= 1
        if entry[1] == 0:
            os.close(_LOCKS.pop(path)[0])  # closing the file releases the flock


def stored_results(path: str | os.PathLike) -> dict | None:
    """The finished run's results in ``path`` (a ``results.json``), or None when it is missing
    or unreadable (then the run resumes from its checkpoints and writes it again)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"{path} is unreadable ({type(err).__name__}); recomputing it")
        return None


class RunFolder:
    """The files of one run: config, metrics log, checkpoints, plots and results.

    One process at a time: the folder is locked while this object lives (``FolderBusy`` for a
    second process)."""

    def __init__(self, path: str | Path, config: Mapping[str, Any]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        lock_folder(self.path, self)
        self.config = json.loads(json.dumps(dict(config), sort_keys=True))
        config_file = self.path / "config.json"
        if not config_file.exists():
            write_atomic(config_file, json.dumps(self.config, indent=2, sort_keys=True))
        self._check_machine()
        self.metrics_file = self.path / "metrics.jsonl"

    def _check_machine(self) -> None:
        """Record the machine in ``machine.json``; warn when another one resumes the run (the
        config may match, but XLA's code, and so the floating-point path, need not)."""
        here, file = describe(), self.path / "machine.json"
        if not file.exists():
            write_atomic(file, json.dumps(here, indent=2, sort_keys=True))
            return
        first = json.loads(file.read_text())
        if changed := sorted(k for k in here.keys() | first.keys() if here.get(k) != first.get(k)):
            warnings.warn(
                f"{self.path} was started on another machine (its machine.json differs in "
                f"{', '.join(changed)}): the resumed run need not reproduce one run on one machine",
                stacklevel=3,
            )

    def read_metrics(self, upto: int | None = None, index: str = "update") -> list[dict]:
        """Metric lines with ``line[index] < upto`` (all when None). A torn last line (a kill
        mid-write) is dropped; any other unreadable line raises a ValueError naming it."""
        if not self.metrics_file.exists():
            return []
        text = self.metrics_file.read_text().splitlines()
        lines = []
        for number, line in enumerate(text, 1):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                if line and number < len(text):  # only the last line can be torn by a kill
                    raise ValueError(
                        f"{self.metrics_file}, line {number}, is not JSON; delete the run "
                        "folder to train again"
                    ) from None
        return [m for m in lines if upto is None or m[index] < upto]

    def rewrite_metrics(self, lines: list[dict], log: bool = True) -> None:
        """Replace the metrics lines (and send them to the open loggers when ``log``)."""
        write_atomic(self.metrics_file, "".join(json.dumps(m) + "\n" for m in lines))
        if log:
            loggers.log(self.path, lines)

    def append_metrics(self, lines: list[dict]) -> None:
        """Add metrics lines, and send them to the open loggers (``experiments.loggers``)."""
        if jax.process_index() != 0:  # several hosts: the first writes
            return
        with self.metrics_file.open("a") as f:
            f.writelines(json.dumps(m) + "\n" for m in lines)
        loggers.log(self.path, lines)


def run_loop(
    folder: RunFolder,
    state: Any,
    step: Callable[[Any, int, int], tuple[Any, dict]],
    total: int,
    chunk: int = 1,
    index: str = "update",
    on_chunk: Callable[[int, int, dict], None] | None = None,
    loss_limit: float | None = 1e12,
) -> tuple[Any, list[dict]]:
    """Run ``state, metrics = step(state, start, n)`` over ``[0, total)`` in chunks, resumably.

    ``metrics`` is a dict of arrays whose leading axis has ``n`` entries, one metrics line each
    (``{index: start + i, name: value[i]}``). After every chunk the lines are appended to
    ``metrics.jsonl`` and ``state`` is checkpointed; starting again with the same folder and
    config restores the last checkpoint (``state`` is the template) and continues. ``step``
    must be deterministic in ``(state, start, n)`` for a resumed run to equal an uninterrupted
    one. ``on_chunk(start, n, metrics)`` runs after each chunk (progress, logging). A chunk
    whose metrics named ``*loss*`` are non-finite or past ``loss_limit`` in size raises
    ``DivergenceError`` before anything of it is written: the last good checkpoint stays
    (``loss_limit=None``: ``step`` checks its own). Returns the final state and every metrics
    line.
    """
    if total < 1 or chunk < 1:
        raise ValueError(f"total={total} and chunk={chunk} must be >= 1")
    ckpt = Checkpointer(folder.path / "checkpoints", folder.config)
    done = ckpt.latest_step() or 0
    if done:  # saved as {"state": state}: orbax stores no bare array
        state = ckpt.restore({"state": state}, done)["state"]
    kept = folder.read_metrics(upto=done, index=index)
    if [m[index] for m in kept] != list(range(done)):
        raise ValueError(
            f"{folder.metrics_file} holds {len(kept)} of the {done} lines before the last "
            f"checkpoint (step {done}): it was truncated or deleted. Restore it, or delete "
            f"{ckpt.directory} to train again."
        )
    folder.rewrite_metrics(kept, log=False)  # drop lines past the checkpoint
    while done < total:
        n = min(chunk, total - done)
        state, metrics = jax.block_until_ready(step(state, done, n))
        metrics = jax.tree.map(np.asarray, metrics)
        if loss_limit is not None:
            _check_losses(metrics, done, loss_limit, ckpt)
        lines = [
            {index: done + i, **{k: _finite_or_none(v[i].tolist()) for k, v in metrics.items()}}
            for i in range(n)
        ]
        folder.append_metrics(lines)
        if on_chunk is not None:
            on_chunk(done, n, metrics)
        ckpt.save(done + n, {"state": state})
        done += n
    return state, folder.read_metrics(index=index)


def _check_losses(metrics: dict, start: int, limit: float, ckpt: Checkpointer) -> None:
    """``check_losses`` for a chunk of a run: the fix names the last good checkpoint."""
    kept = ckpt.latest_step()
    check_losses(
        metrics, "training", limit, start,
        (f"The last good checkpoint (step {kept}) is kept in {ckpt.directory}. " if kept
         else "No checkpoint was written. ")
        + "Lower the learning rate(s), check the reward scale and the data, and train again in "
        "a fresh folder.",
    )  # fmt: skip


def _nan_for_none(x: Any) -> Any:
    return [_nan_for_none(v) for v in x] if isinstance(x, list) else np.nan if x is None else x


def _to_host(tree: Any) -> Any:
    """NumPy copies of (seed-sharded) arrays, gathered from every host when there are several."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def _check_memory(compiled: Any, num_seeds: int, n: int) -> None:
    """Refuse a compiled chunk whose working memory (XLA's own count) is more than is free."""
    use = compiled.memory_analysis()
    if use is None:  # a backend without memory analysis
        return
    need = use.temp_size_in_bytes + use.output_size_in_bytes + use.argument_size_in_bytes
    check_fits(
        need, f"a chunk of {n} updates of {num_seeds} seeds (XLA's estimate)",
        "train fewer seeds at once or fewer envs per seed (a smaller batch)",
    )  # fmt: skip


def _chunk_program(agent: Agent, n: int, sharding: NamedSharding) -> Any:
    """The jitted, vmapped scan of ``n`` updates of ``agent``, seeds split by ``sharding``: one
    function per (agent, n, sharding), kept on the agent, so a second ``run_chunked`` of the
    same agent (a resume in the same process) reuses its compiled program."""
    programs = agent.__dict__.setdefault("_chunk_programs", {})
    if (n, sharding) not in programs:

        def chunk(state):  # -> (state, metrics, whether the policy's parameters are finite)
            state, metrics = jax.lax.scan(lambda s, _: agent.update(s), state, None, n)
            finite = jnp.array(True)
            for x in jax.tree.leaves(agent.policy_params(state)):
                if jnp.issubdtype(x.dtype, jnp.floating):
                    finite &= jnp.isfinite(x).all()
            return state, metrics, finite

        program = jax.jit(jax.vmap(chunk), in_shardings=sharding, out_shardings=sharding)
        programs[n, sharding] = program
    return programs[n, sharding]


def _exclude(
    metrics: dict, diverged: np.ndarray, finite: np.ndarray, start: int, limit: float
) -> dict:
    """``metrics`` ({name: [n, S, ...]}) with the seeds that diverge in this chunk added to
    ``diverged`` [S] (updated in place; a warning names each), every diverged seed's values NaN
    from its diverging update on, and a ``diverged`` [n, S] metric; raises ``DivergenceError``
    once every seed has diverged."""
    n, num_seeds = len(next(iter(metrics.values()))), diverged.size
    first = np.full(num_seeds, n)  # the update (within the chunk) each seed diverged at
    first[diverged] = 0
    for bad in diverging(metrics, limit).values():
        hit = bad.reshape(n, num_seeds, -1).any(-1)  # [n, S]
        first = np.minimum(first, np.where(hit.any(0), hit.argmax(0), n))
    first[~finite & (first == n)] = n - 1  # parameters went non-finite without a loss saying so
    for seed in np.flatnonzero((first < n) & ~diverged):
        warnings.warn(
            f"seed {seed} diverged at update {start + first[seed]}; its metrics are NaN from "
            "there on and it is excluded from aggregates",
            stacklevel=2,
        )
    gone = np.arange(n)[:, None] >= first[None, :]  # [n, S]
    diverged |= first < n
    if diverged.all():
        raise DivergenceError(
            f"training diverged in every seed (the last at update {start + first.max()}); "
            "lower the learning rate(s) and train again in a fresh folder."
        )
    nan_after = lambda v: np.where(gone.reshape(n, num_seeds, *([1] * (v.ndim - 2))), np.nan, v)
    out = {k: nan_after(np.asarray(v, np.float64)) for k, v in metrics.items()}
    return {**out, "diverged": gone.astype(np.float64)}


def run_chunked(
    agent: Agent,
    key: jax.Array,
    num_seeds: int,
    folder: RunFolder,
    updates_per_chunk: int = 50,
    progress: bool = True,
    exclude_diverged: bool = False,
    loss_limit: float = 1e12,
    bar: tqdm | None = None,
) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """Train ``num_seeds`` seeds of ``agent`` (vmapped ``update``s) for ``agent.num_updates``.
    ``bar``: a progress bar to advance (several runs under one bar) instead of a new one.

    Returns (final batched state, metrics {name: [num_seeds, num_updates, ...]}, timing).
    ``timing["train_s"]``: compile and run seconds over every process that trained in
    ``folder`` (a resumed run counts the earlier ones; kept in ``train_time.json``).
    The metrics lines count ``agent.step_unit`` (``env_steps`` or ``gradient_steps``) per seed,
    ``agent.steps_before`` (SAC's random warm-up) included.

    Divergence (a ``*loss*`` metric non-finite or past ``loss_limit`` in size, or non-finite
    policy parameters after a chunk) raises ``DivergenceError`` with the last good checkpoint
    kept; with ``exclude_diverged`` the run goes on instead and a diverged seed's metrics are
    NaN from its diverging update on, its ``diverged`` metric 1, and its index listed in
    ``timing["diverged_seeds"]`` (which callers leave out of aggregates); only all seeds
    diverging stops the run.
    """
    if num_seeds < 1 or updates_per_chunk < 1:
        raise ValueError("num_seeds and updates_per_chunk must be >= 1")
    t0 = time.perf_counter()
    # seeds initialised one at a time: one small compile (a vmapped init compiles for as long as
    # a training chunk, mostly the orthogonal initialisers' batched QR); same values as vmap
    sharding = seed_sharding(num_seeds)  # seeds split over every device
    init = jax.jit(agent.init)
    seeds = [init(k) for k in jax.random.split(key, num_seeds)]
    state = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *seeds), sharding)
    per_update = agent.steps_per_update
    compiled: dict[int, Any] = {}
    timing = {"compile_s": 0.0, "run_s": 0.0}
    time_file = folder.path / "train_time.json"
    earlier = json.loads(time_file.read_text())["train_s"] if time_file.exists() else 0.0
    train_s = lambda: earlier + timing["compile_s"] + timing["run_s"]
    stored = folder.read_metrics()  # a resumed run's diverged seeds stay excluded
    diverged = np.asarray(stored[-1].get("diverged", 0) if stored else 0) > 0
    diverged = np.broadcast_to(diverged, (num_seeds,)).copy()

    def step(state, start, n):
        if n not in compiled:
            tc = time.perf_counter()
            compiled[n] = _chunk_program(agent, n, sharding).lower(state).compile()
            timing["compile_s"] += time.perf_counter() - tc
            _check_memory(compiled[n], num_seeds, n)
        tr = time.perf_counter()
        state, metrics, finite = jax.block_until_ready(compiled[n](state))
        timing["run_s"] += time.perf_counter() - tr
        metrics, finite = _to_host((metrics, finite))
        metrics = {k: np.moveaxis(v, 0, 1) for k, v in metrics.items()}  # [n, S, ...]
        if not exclude_diverged and not np.all(finite):
            raise DivergenceError(
                f"training diverged: non-finite policy parameters in seeds "
                f"{np.flatnonzero(~np.asarray(finite)).tolist()} during updates {start}-"
                f"{start + n - 1}; the last good checkpoint (if any) is kept in {folder.path}. "
                "Lower the learning rate(s) and train again in a fresh folder."
            )
        if exclude_diverged:
            metrics = _exclude(metrics, diverged, np.asarray(finite), start, loss_limit)
        steps = agent.steps_at(start + 1 + np.arange(n))
        return state, {agent.step_unit.replace(" ", "_"): steps, **metrics}

    own_bar = bar is None
    bar = bar or tqdm(
        total=agent.num_updates * per_update,
        unit="step",
        unit_scale=True,
        disable=not progress,
        desc=f"{agent.step_unit}/seed",
    )
    last = {"return": float("nan"), "steps": 0}

    advanced = [0]  # steps this call moved the bar

    def on_chunk(start, n, metrics):
        if advanced[0] == 0:
            bar.update(start * per_update)  # resumed: what earlier runs did
            advanced[0] += start * per_update
        advanced[0] += n * per_update
        ret = metrics.get("return")
        if ret is not None and np.isfinite(ret).any():
            last["return"] = float(np.nanmean(ret[-max(1, n // 10) :]))
        bar.update(n * per_update)
        last["steps"] += num_seeds * n * per_update
        rate = last["steps"] / max(timing["run_s"], 1e-9)
        bar.set_postfix(steps_per_s=f"{rate:,.0f}", ret=f"{last['return']:.2f}")
        if jax.process_index() == 0:
            write_atomic(time_file, json.dumps({"train_s": train_s()}))

    limit = None if exclude_diverged else loss_limit  # step checks its own when excluding
    state, lines = run_loop(
        folder, state, step, agent.num_updates, updates_per_chunk, on_chunk=on_chunk,
        loss_limit=limit,
    )  # fmt: skip
    bar.update(agent.num_updates * per_update - advanced[0])  # a run finished before
    if own_bar:
        bar.close()
    names = [k for k in lines[0] if k not in ("update", "env_steps", "gradient_steps", "diverged")]
    metrics = {
        k: np.moveaxis(np.array([_nan_for_none(m[k]) for m in lines], np.float64), 0, 1)
        for k in names
    }
    timing |= {  # steps_per_s: over all seeds, this call's chunks only (NaN if none ran)
        "diverged_seeds": np.flatnonzero(diverged).tolist(),
        "wall_s": time.perf_counter() - t0,
        "train_s": train_s(),
        "steps_per_s": last["steps"] / timing["run_s"] if timing["run_s"] else float("nan"),
    }
    return state, metrics, timing
