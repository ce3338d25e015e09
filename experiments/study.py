"""The scaffold every study stands on: shared arguments, its run folder, named keys, results.

    @dataclasses.dataclass
    class Args(StudyArgs):
        out: str = "results/my_study"
        ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)

    def main(args: Args) -> dict:
        study = Study("my_study", args)                  # folder, config.json, seeds, lock
        if (done := study.finished()) is not None:       # a finished run: its results.json
            return done
        state, metrics, timing = train_policy(study.folder("agent"), agent, study.key("agent"),
                                              args.seeds, progress=args.progress)
        return study.finish(results, summary_text)       # results.json, summary.md, printed

One config serialisation (``config_dict``: nested dataclasses and flax configs become dicts,
tuples and arrays lists) and keys derived by name (``named_key``: ``fold_in`` of a stable hash
of each name) instead of seed offsets, so adding a stage never shifts another stage's keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
import warnings
import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
from agents.checkpoint import Checkpointer
from agents.core import (
    Agent,
    Policy,
    batched,
    check_losses,
    export_policy,
    load_policy,
    seed_sharding,
)
from agents.evaluation import evaluate, record
from agents.replay import Transition
from agents.replay.datasets import collect, dataset_complete, load_dataset, save_dataset
from agents.replay.levels import medium_snapshot, uniform_policy, with_snapshots
from agents.sac import SACConfig, make_sac
from envs.platform import describe
from experiments import loggers
from experiments.plots import write_gif
from experiments.runner import (
    RunFolder,
    fmt_ci,
    iqm_ci,
    lock_folder,
    md_table,
    run_chunked,
    stored_results,
    write_atomic,
)

__all__ = [
    "RUN_ONLY",
    "Study",
    "StudyArgs",
    "cannot_render",
    "cli",
    "config_dict",
    "demonstrations",
    "detection_table",
    "loss_lines",
    "metric_lines",
    "named_key",
    "parse_env_kwargs",
    "per_seed",
    "sac_experts",
    "seedwise",
    "spike_table",
    "task_datasets",
    "train_policy",
    "write_video",
]

#: Arguments that change how a run is carried out, never its results (``preset`` only names
#: the defaults: the config records the values it chose).
RUN_ONLY = (
    "out",
    "progress",
    "updates_per_chunk",
    "overwrite",
    "on_divergence",
    "log",
    "video",
    "preset",
)


@dataclasses.dataclass
class StudyArgs:
    """Arguments every study has."""

    out: str = "results/study"  # the run folder; an existing one is resumed
    preset: Literal["cpu", "paper"] = "cpu"  # the defaults: this CPU's budget or the paper's
    seed: int = 0
    seeds: int = 5
    progress: bool = True
    overwrite: bool = False  # a finished run: compute its results again (from its checkpoints)
    log: tuple[loggers.Kind, ...] = ()  # metrics also to TensorBoard and/or W&B (extra "log")
    video: int = 0  # steps of a GIF of each trained policy acting greedily (0: none)


#: A study's named defaults: preset name -> a factory of its Args, or, for a study with
#: subcommands, -> {subcommand: factory}.
Presets = Mapping[str, Callable[[], Any] | Mapping[str, Callable[[], Any]]]


def cli(presets: Presets, args: Sequence[str] | None = None) -> Any:
    """The study's arguments from the command line (``args``, default ``sys.argv[1:]``):
    tyro over the defaults of ``--preset NAME`` (anywhere on the line; default ``cpu``), so
    every other flag overrides the preset's value."""
    argv, name, rest = list(sys.argv[1:] if args is None else args), "cpu", []
    while argv:
        arg = argv.pop(0)
        if arg == "--preset" and argv:
            name = argv.pop(0)
        elif arg.startswith("--preset="):
            name = arg.partition("=")[2]
        else:
            rest.append(arg)
    if name not in presets:
        raise SystemExit(f"--preset {name!r} is not a preset of this study; choose one of "
                         f"{', '.join(presets)}")  # fmt: skip
    chosen = presets[name]
    if not isinstance(chosen, Mapping):
        default = dataclasses.replace(chosen(), preset=name)
        return tyro.cli(type(default), default=default, args=rest)
    defaults = {k: dataclasses.replace(make(), preset=name) for k, make in chosen.items()}
    commands = tuple(
        Annotated[type(d), tyro.conf.subcommand(k, default=d)] for k, d in defaults.items()
    )
    return tyro.cli(Union[commands], default=next(iter(defaults.values())), args=rest)  # noqa: UP007


def parse_env_kwargs(text: str, flag: str = "--env-kwargs") -> dict[str, Any]:
    """The JSON object of ``envs.make`` arguments given to ``flag``, or a ValueError naming it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{flag} {text!r} is not JSON ({err.msg} at character {err.pos}); write an object "
            """such as '{"reveal_skill": true}' (double quotes, lower-case true/false)"""
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"{flag} {text!r} is a JSON {type(value).__name__}; give an object of parameter "
            """names and values, e.g. '{"gravity_scale": 0.5}'"""
        )
    return value


def config_dict(obj: Any, drop: tuple[str, ...] = ()) -> Any:
    """``obj`` as JSON: dataclasses (flax configs included) as dicts of their fields without
    ``drop`` (top level only), tuples as lists, arrays as (nested) lists, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: config_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.name not in drop
        }
    if isinstance(obj, Mapping):
        return {str(k): config_dict(v) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list | tuple):
        return [config_dict(v) for v in obj]
    if isinstance(obj, np.ndarray | jax.Array | np.generic):
        return np.asarray(obj).tolist()
    return obj


def per_seed(x: Any) -> Any:
    """Per-seed values as results, recursively through dicts: [S] -> IQM [95% CI], arrays
    [S, ...] -> nested lists."""
    if isinstance(x, Mapping):
        return {k: per_seed(v) for k, v in x.items()}
    return iqm_ci(np.asarray(x)) if np.ndim(x) == 1 else np.asarray(x).tolist()


def detection_table(
    scores: Mapping[str, Any], arms: Mapping[str, str], gap: float, chosen: Mapping[str, Any]
) -> list[str]:
    """The markdown rows of ``skills.sbd.detection_scores`` (through ``per_seed``): each arm
    ({arm: label}) at the chosen ``gap`` (its scores in ``chosen``, when there) and at its best
    gap per seed (an oracle), then the fixed-length and random baselines."""
    prf = ("precision", "recall", "f1")
    row = lambda name, c: f"| {name} | " + " | ".join(fmt_ci(c[k]) for k in prf) + " |"
    oracle = lambda name, ci: f"| {name} (oracle) | | | {fmt_ci(ci)} |"
    lines = ["| segmentation | precision | recall | F1 |", "|---|---|---|---|"]
    for arm, label in arms.items():
        lines += [row(f"{label}, gap {gap:g}", chosen[arm])] if arm in chosen else []
        lines.append(oracle(f"{label}, best gap per seed", scores["best_gap_f1"][arm]))
    fixed = f"fixed length {scores['fixed_best_length']} (best median length, oracle)"
    return [
        *lines,
        row(fixed, scores["fixed_at_best_length"]),
        oracle("fixed length, best length per seed", scores["fixed_best_f1"]),
        row("random at the true rate (oracle)", scores["random_at_true_rate"]),
        oracle("random, best rate per seed", scores["random_best_f1"]),
    ]


SPIKE_COLUMNS = {
    "nll_at_switch": "NLL at true switches",
    "peak_within_10": "peak NLL within 10 steps",
    "nll_elsewhere": "NLL elsewhere",
    "spike": "spike",
}


def spike_table(spikes: Mapping[str, Mapping[str, Any]], what: str) -> str:
    """The markdown table of the action models' NLL spikes {arm: {metric: (iqm, lo, hi)}} (from
    ``skills.sbd.nll_spikes`` or ``nll_around_switches``), a row per arm labelled ``what arm``."""
    keys = [k for k in SPIKE_COLUMNS if k in next(iter(spikes.values()))]
    rows = [[f"{what} {a}", *(s[k] for k in keys)] for a, s in spikes.items()]
    return md_table(["action model", *(SPIKE_COLUMNS[k] for k in keys)], rows)


def seedwise(fn: Callable[..., Any], *xs: Any, what: str = "training") -> Any:
    """``jax.jit(jax.vmap(fn))(*xs)``: a stage over seeds in one program, the seeds split over
    every device (``agents.core.seed_sharding``) when there are several. Every dict of metrics
    it returns (its result, or an element of a returned tuple; [S, steps] arrays) goes through
    ``check_losses``, so a diverged stage stops with ``DivergenceError`` naming ``what``."""
    if jax.device_count() == 1:
        out = jax.jit(jax.vmap(fn))(*xs)
    else:
        sharding = seed_sharding(jax.tree.leaves(xs)[0].shape[0])
        xs = jax.device_put(xs, sharding)
        out = jax.jit(jax.vmap(fn), in_shardings=sharding, out_shardings=sharding)(*xs)
    for part in out if isinstance(out, tuple) else (out,):
        if isinstance(part, Mapping):
            steps_first = lambda x: np.moveaxis(np.asarray(x), 0, 1) if np.ndim(x) > 1 else x
            check_losses(jax.tree.map(steps_first, part), what)
    return out


def metric_lines(stage: str, index: str, at: Any, columns: Mapping[str, Any]) -> list[dict]:
    """Metrics lines ``{"stage": stage, index: value, name: [S] values at position}`` for each
    (position, value) in ``at``, of ``columns`` {name: [S, N]}."""
    cut = lambda i: {k: np.asarray(c)[:, i].tolist() for k, c in columns.items()}
    return [{"stage": stage, index: value, **cut(i)} for i, value in at]


def loss_lines(stage: str, losses: Mapping[str, Any], every: int = 10) -> list[dict]:
    """Metrics lines ``loss_<name>`` of per-update losses {name: [S, updates]} at every
    ``every``-th update and the last."""
    updates = np.shape(next(iter(losses.values())))[1]
    at = sorted({*range(0, updates, every), updates - 1})
    columns = {f"loss_{name}": v for name, v in losses.items()}
    return metric_lines(stage, "update", zip(at, at), columns)


def named_key(seed: int, *names: str | int) -> jax.Array:
    """The key of ``names`` under ``seed``: one ``fold_in`` per name (a CRC32 of its text)."""
    key = jax.random.key(seed)
    for name in names:
        key = jax.random.fold_in(key, zlib.crc32(str(name).encode()) & 0x7FFFFFFF)
    return key


class Study:
    """A study's run folder: its config, named keys, sub-run folders and final results."""

    def __init__(self, name: str, args: Any, selects: tuple[str, ...] = (), **extra: Any):
        """``selects``: arguments that only choose which stages run (a list of ranks or arms),
        left out of the stages' config, so a run with more of them reuses every stage done."""
        self.name, self.args = name, args
        self.path = Path(args.out)
        self.path.mkdir(parents=True, exist_ok=True)
        lock_folder(self.path, self)
        self.config = {"experiment": name, **config_dict(args, drop=RUN_ONLY), **extra}
        self.stage_config = {k: v for k, v in self.config.items() if k not in selects}
        if not (self.path / "config.json").exists():  # a refused resume leaves the old one
            self._write_config()
        self._loggers = contextlib.ExitStack()  # --log: TensorBoard / W&B until finish()
        self._loggers.enter_context(
            loggers.opened(getattr(args, "log", ()), self.path, self.config)
        )
        weakref.finalize(self, self._loggers.close)
        self.start = time.perf_counter()

    def _write_config(self) -> None:
        write_atomic(self.path / "config.json", json.dumps(self.config, indent=2, sort_keys=True))

    def finished(self) -> dict | None:
        """This run's results when the folder already holds them for this config (then the
        study returns them at once; ``--overwrite`` computes them again)."""
        stored = stored_results(self.path / "results.json")
        if stored is None or getattr(self.args, "overwrite", False):
            return None
        try:
            same = json.loads((self.path / "config.json").read_text()) == json.loads(
                json.dumps(self.config, default=float)
            )
        except (OSError, json.JSONDecodeError):
            return None
        if same:
            print(f"{self.name}: finished already; results in {self.path} (--overwrite redoes)")
            self._loggers.close()
            return stored
        return None

    def key(self, *names: str | int) -> jax.Array:
        """The key of one named stage of this study (``named_key(args.seed, *names)``)."""
        return named_key(self.args.seed, *names)

    def seed_keys(self, *names: str | int) -> jax.Array:
        """[args.seeds] keys of one named stage, one per seed."""
        return jax.random.split(self.key(*names), self.args.seeds)

    def stage(self, name: tuple[str | int, ...], fn: Callable[..., Any], *xs: Any,
              what: str = "training") -> Any:  # fmt: skip
        """``seedwise(fn, *xs, what=what)``, kept in ``out/stages/<name>`` (orbax, with this
        study's config less ``selects``): a study stopped after this stage loads its output
        instead of running it again; one whose config changed is refused by name
        (``CheckpointError``)."""
        slug = re.sub(r"[^\w.-]+", "-", "-".join(map(str, name))).strip("-")
        ckpt = Checkpointer(self.path / "stages" / slug, self.stage_config, max_to_keep=1)
        if ckpt.latest_step() is not None:  # a dict: orbax stores no bare array
            return ckpt.restore({"out": jax.eval_shape(jax.vmap(fn), *xs)})["out"]
        out = seedwise(fn, *xs, what=what)
        ckpt.save(0, {"out": out})
        return out

    def folder(self, *parts: str, **config: Any) -> RunFolder:
        """The run folder ``out/<parts>`` of one sub-run, recording the study's config and
        ``config`` (a resumed sub-run must match both)."""
        return RunFolder(self.path.joinpath(*parts), {**self.config, **config_dict(config)})

    def finish(self, results: dict, summary: str) -> dict:
        """Write ``results.json`` (with the wall-clock time and the machine,
        ``envs.platform.describe()``) and ``summary.md``; print it."""
        results = {**results, "wall_s": time.perf_counter() - self.start, "machine": describe()}
        self._write_config()  # the config these results come from
        text = json.dumps(config_dict(results), indent=2, default=float)
        write_atomic(self.path / "results.json", text)
        write_atomic(self.path / "summary.md", summary)
        self._loggers.close()
        print(summary)
        return results


def write_video(
    path: str | Path,
    env: Any,
    env_params: Any,
    policy: Policy,
    params: Any,
    key: jax.Array,
    num_steps: int = 200,
) -> Path | None:
    """A GIF of one env under ``policy``'s greedy actions for ``num_steps`` steps
    (``agents.evaluation.record``), or None with a warning when the env does not render (or
    no OpenGL is installed for MuJoCo's renderer)."""
    with cannot_render() as failed:
        frames, _ = jax.jit(record, static_argnums=(1, 3, 5))(
            key, env, env_params, policy, params, num_steps
        )
        return write_gif(path, np.asarray(frames))
    warnings.warn(f"no video: {failed[0]}", stacklevel=2)
    return None


@contextlib.contextmanager
def cannot_render() -> Any:
    """Collects (into the list it yields) the error of an env that does not render, or of
    MuJoCo's renderer without OpenGL, instead of raising it: videos are optional."""
    failed: list[Exception] = []
    try:
        yield failed
    except NotImplementedError as err:
        failed.append(err)
    except RuntimeError as err:
        if "OpenGL" not in str(err):
            raise
        failed.append(err)


def train_policy(
    folder: RunFolder,
    agent: Agent,
    key: jax.Array,
    num_seeds: int,
    updates_per_chunk: int = 50,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    exclude_diverged: bool = False,
    video: tuple[Any, Any, int] | None = None,
) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """Train ``num_seeds`` seeds of ``agent`` in ``folder`` (resumable) and export the first
    seed's policy (the first that did not diverge, with ``exclude_diverged``: see
    ``run_chunked``) to ``folder/policy`` (``agents.core.load_policy`` reads it back);
    ``video=(env, env_params, steps)``: and a GIF of it acting greedily, ``folder/policy.gif``.

    Returns the final batched state, metrics {name: [num_seeds, num_updates]} and timing.
    """
    state, metrics, timing = run_chunked(
        agent, key, num_seeds, folder, updates_per_chunk, progress, exclude_diverged
    )
    target = folder.path / "policy"
    if not target.exists():
        first = min(set(range(num_seeds)) - set(timing["diverged_seeds"]))
        params = jax.tree.map(lambda x: x[first], agent.policy_params(state))
        export_policy(target, agent.policy, params, {**folder.config, **(metadata or {})})
    if video is not None and video[2] > 0 and not (folder.path / "policy.gif").exists():
        policy, params, _ = load_policy(target)
        write_video(folder.path / "policy.gif", video[0], video[1], policy, params,
                    jax.random.key(0), video[2])  # fmt: skip
    return state, metrics, timing


def sac_experts(
    root: str | Path,
    env_name: str,
    tasks: Mapping[str, Mapping[str, float]],
    sac: SACConfig,
    seed: int = 0,
    episode_steps: int = 1000,
    progress: bool = True,
) -> dict[str, tuple[Policy, Any]]:
    """{task: (policy, params)} of one SAC expert per task (``env_name`` with the task's params,
    e.g. ``{"backward": {"direction": -1.0}}``): loaded from ``root/<task>/policy``, or, for
    the missing ones, trained in one vmapped program over their task params (resumable, in
    ``root/training-<their names>``) and exported there."""
    root = Path(root)
    missing = [n for n in tasks if not (root / n / "policy").exists()]
    env, default = envs.make(env_name, max_steps_in_episode=episode_steps)
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
    for name in set(tasks) - set(missing):
        meta = load_policy(root / name / "policy")[2]
        stored = default.replace(**meta.get("env_kwargs", {}))
        if meta.get("env") != env_name or not same(stored, default.replace(**tasks[name])):
            raise ValueError(
                f"the expert in {root / name} was trained on {meta.get('env')} with "
                f"{meta.get('env_kwargs')}, not {env_name} with {dict(tasks[name])}; delete it "
                "or point --experts at another folder"
            )
    if missing:
        params = [default.replace(**tasks[n]) for n in missing]
        stacked = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *params)
        agent = batched(lambda task: make_sac(sac, env, task), stacked)
        config = {"experts": missing, "env": env_name, "tasks": [dict(tasks[n]) for n in missing]}
        run = "training-" + "_".join(missing).replace(" ", "-").replace(",", "")
        folder = RunFolder(root / run, {**config, "seed": seed, "sac": config_dict(sac)})
        state, _, _ = run_chunked(
            agent, named_key(seed, "experts", *missing), 1, folder, 5, progress
        )
        trained = agent.policy_params(jax.tree.map(lambda x: x[0], state))  # seed 0: [tasks, ...]
        for i, name in enumerate(missing):
            meta = {"env": env_name, "env_kwargs": dict(tasks[name]), "env_steps": sac.total_steps}
            one = jax.tree.map(lambda x, i=i: x[i], trained)
            export_policy(root / name / "policy", agent.policy, one, meta)
    return {n: load_policy(root / n / "policy")[:2] for n in tasks}


def demonstrations(
    key: jax.Array,
    env_name: str,
    task: Mapping[str, float],
    expert: tuple[Policy, Any],
    episodes: int,
    episode_steps: int = 1000,
    action_noise: float = 0.0,
    info_keys: tuple[str, ...] = (),
) -> Transition | tuple[Transition, dict[str, np.ndarray]]:
    """``episodes`` whole episodes of a memoryless ``expert`` (its sampled actions, plus Gaussian
    ``action_noise`` clipped to the action bounds) on ``env_name`` with ``task``'s params:
    transitions [episodes * episode_steps] in episode order (and those ``info_keys``, the same
    shape)."""
    policy, params = expert
    env, env_params = envs.make(env_name, max_steps_in_episode=episode_steps, **task)
    space = env.action_space(env_params)

    def act(obs, key):
        k_act, k_noise = jax.random.split(key)
        action = policy.act(params, policy.initial_carry(obs.shape[0]), obs, k_act, False)[1]
        noise = action_noise * jax.random.normal(k_noise, action.shape)
        return jnp.clip(action + noise, space.low, space.high)

    run = jax.jit(
        lambda key: collect(key, env, env_params, act, episode_steps, episodes, info_keys)
    )
    flat = lambda x: np.asarray(x).swapaxes(0, 1).reshape(-1, *x.shape[2:])  # [T, E] -> [E * T]
    return jax.tree.map(flat, run(key))


#: Dataset levels ``task_datasets`` makes (D4RL's, plus OER's medium-random).
TASK_LEVELS = ("random", "medium", "expert", "medium-random")


def task_datasets(
    root: str | Path,
    family: str,
    env_name: str,
    tasks: Mapping[str, Mapping[str, float]],
    level: str = "medium",
    sac: SACConfig | None = None,
    dataset_steps: int = 100_000,
    snapshot_every: int = 5_000,
    eval_episodes: int = 10,
    episode_steps: int = 1000,
    seed: int = 0,
    progress: bool = True,
    dataset_root: str | Path | None = None,
    collect_envs: int = 10,
) -> dict[str, tuple[Transition, tuple[float, float]]]:
    """{task: (flat transitions [N], (random, expert) returns)} of the Minari dataset
    ``skill-agents/<family>-<task>-<level>-v0`` of each task (``env_name`` with the task's
    params): loaded, or, for the missing ones, made here. SAC learns every missing task in one
    vmapped program (resumable, in ``root/training-<family>-<their names>``), evaluated greedily
    every ``snapshot_every`` env steps with its parameters kept; as in D4RL, ``expert`` is the
    best snapshot, ``medium`` the one closest to a third of the way from the random return to
    the expert's (up to the first that reaches it), both sampled; ``random`` uniform actions;
    ``medium-random`` half medium, half random episodes (OER's)."""
    if level not in TASK_LEVELS:
        raise ValueError(f"level={level!r}: choose one of {TASK_LEVELS}")
    slug = lambda name: name.replace(", ", "-").replace(" ", "-").replace(".", "_")
    ids = {n: f"skill-agents/{family}-{slug(n)}-{level}-v0" for n in tasks}
    for name, dataset_id in ids.items():
        if not re.fullmatch(r"[\w/-]+-v0", dataset_id):
            raise ValueError(
                f"task {name!r} makes the dataset id {dataset_id!r}, which Minari "
                "refuses; use letters, digits, spaces, '-', '_' and '.' in names"
            )
    missing = [n for n in tasks if not dataset_complete(ids[n], dataset_root)]
    if missing:
        if dataset_steps % collect_envs:
            raise ValueError(f"dataset_steps={dataset_steps}: a multiple of {collect_envs}")
        sac = SACConfig() if sac is None else sac
        env, default = envs.make(env_name, max_steps_in_episode=episode_steps)
        params = [default.replace(**tasks[n]) for n in missing]
        stacked = jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *params)
        per_stage = snapshot_every // sac.steps_per_update
        if per_stage < 1 or snapshot_every % sac.steps_per_update:
            raise ValueError(
                f"snapshot_every={snapshot_every} must be a positive multiple of sac.num_envs *"
                f" sac.num_steps = {sac.steps_per_update}"
            )

        def learner(p):  # the episode length stays a Python int (evaluation's loop length)
            p = p.replace(max_steps_in_episode=episode_steps)
            return with_snapshots(make_sac(sac, env, p), env, p, per_stage, eval_episodes)

        agent = batched(learner, stacked)
        config = {"family": family, "env": env_name, "tasks": [dict(tasks[n]) for n in missing]}
        config |= {"seed": seed, "sac": config_dict(sac), "snapshot_every": snapshot_every}
        folder = RunFolder(Path(root) / f"training-{family}-{'_'.join(map(slug, missing))}", config)
        run, metrics, _ = run_chunked(
            agent, named_key(seed, "datasets", family, *missing), 1, folder, 1, progress
        )
        space = env.action_space(default)
        uniform = uniform_policy(space.low, space.high)
        rollout = jax.jit(
            lambda p, snapshot, key, sampled: collect(
                key, env, p,
                lambda obs, k: jnp.where(
                    sampled, agent.policy.act(snapshot, (), obs, k)[1],
                    uniform.act((), (), obs, k)[1],
                ),
                dataset_steps // collect_envs, collect_envs,
            )
        )  # fmt: skip
        random_return = jax.jit(
            lambda p, key: evaluate(key, env, p, uniform, (), eval_episodes, True, episode_steps)[
                "return"
            ].mean()
        )
        for i, name in enumerate(missing):
            evals = np.asarray(metrics["eval_return"])[0, :, i]
            expert = int(np.argmax(evals))
            rand = float(random_return(params[i], named_key(seed, "random", family, name)))
            if expert == 0 and level != "random" and evals.size > 1:
                warnings.warn(
                    f"task {name!r}: SAC's best snapshot is its first (return {evals[0]:.1f}; the "
                    f"later ones {evals[1:].max():.1f} at best), so its {level} data come from "
                    "a barely trained policy; delete "
                    f"{folder.path} and the datasets, and give SAC more steps "
                    "(--sac.total-steps, --sac.buffer-size)",
                    stacklevel=2,
                )
            medium = medium_snapshot(evals, float(evals[expert]), rand)
            snap = lambda k, i=i: jax.tree.map(lambda x: x[0, i, k], run.params)
            key = named_key(seed, "collect", family, name, level)
            k_a, k_b = jax.random.split(key)
            if level == "medium-random":
                half = lambda x: x[:, : collect_envs // 2]
                a = jax.tree.map(half, rollout(params[i], snap(medium), k_a, True))
                b = jax.tree.map(half, rollout(params[i], snap(medium), k_b, False))
                data = jax.tree.map(lambda x, y: np.concatenate([x, y], 1), a, b)
            else:
                chosen = snap(medium if level == "medium" else expert)
                data = rollout(params[i], chosen, k_a, level != "random")
            save_dataset(
                jax.tree.map(np.asarray, data),
                ids[name],
                env_name=env_name,
                env_kwargs={"max_steps_in_episode": episode_steps, **dict(tasks[name])},
                ref_min_score=rand,
                ref_max_score=float(evals[expert]),
                root=dataset_root,
                metadata={
                    "family": family,
                    "task": name,
                    "level": level,
                    "eval_returns": evals.tolist(),
                    "medium_stage": medium,
                    "expert_stage": expert,
                    "sac": config_dict(sac),
                    "snapshot_every": snapshot_every,
                },
            )
    out = {}
    made = {"sac": config_dict(SACConfig() if sac is None else sac)}
    for name in tasks:
        data, meta = load_dataset(ids[name], dataset_root)
        made["env_kwargs"] = {"max_steps_in_episode": episode_steps, **dict(tasks[name])}
        for field, wanted in made.items():
            if json.dumps(meta.get(field), sort_keys=True) != json.dumps(wanted, sort_keys=True):
                raise ValueError(
                    f"task {name!r}: the stored dataset {ids[name]} was made with {field}="
                    f"{meta.get(field)}, not {wanted}; delete {meta['path']} to remake it, or "
                    "give another dataset root"
                )
        out[name] = (data, (float(meta["ref_min_score"]), float(meta["ref_max_score"])))
    return out
