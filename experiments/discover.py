"""Skill-boundary detection on your own demonstrations, from an ``.npz`` file or a Minari dataset.

    python -m experiments.discover --data demos.npz --out results/discover
    python -m experiments.discover --data minari:skill-agents/halfcheetah-medium-v0 --length 200

``.npz``: ``obs`` [N, T, D] (or [T, D]: one trajectory), ``actions`` [N, T] integers (discrete)
or [N, T, A] floats (continuous), and optionally ``starts`` (bool [N, T]: steps that begin an
episode inside a trajectory) and ``boundaries`` (bool [N, T]: known skill switches, for choosing
the gap and scoring); ``--obs-key`` etc. rename them. A Minari dataset's episodes are laid end to
end, episode starts marked, and cut into rows of ``--length`` steps (the remainder dropped).

``skills.discover`` does the work, once per seed (``--seeds``): it fits the action model, sets
the gap (``--gap``; else the best F1 on the first ``held_in`` of the trajectories when true
boundaries are given, else Otsu's threshold of the loss jumps) and cuts. The run folder gets
``segments.json`` (seed 0's segments per trajectory), ``discovery.npz`` (every seed's
boundaries [S, N, T] and per-step losses), ``segments.png`` (losses with the cuts, first
trajectories), ``results.json`` (the gaps; precision, recall and F1 with true boundaries, IQM
and 95% CI over seeds) and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from agents.hparams import require
from agents.replay.datasets import load_dataset
from envs.core import spaces
from experiments.plots import figure
from experiments.runner import iqm_ci, md_table, write_atomic
from experiments.study import Study, StudyArgs, cli
from skills.action_model import ActionModelConfig
from skills.discover import discover


@dataclasses.dataclass
class Args(StudyArgs):
    out: str = "results/discover"
    seeds: int = 1
    data: str = "demos.npz"  # an .npz file, or minari:<dataset id>
    dataset_root: str | None = None  # Minari root; default $MINARI_DATASETS_PATH or ~/.minari
    obs_key: str = "obs"
    actions_key: str = "actions"
    starts_key: str = "starts"  # optional in the file
    boundaries_key: str = "boundaries"  # optional in the file
    length: int = 0  # Minari: steps per row (0: the longest episode)
    num_actions: int = 0  # discrete: the number of actions (0: the largest action + 1)
    gap: float | None = None  # nats; None: chosen (see the module docstring)
    min_len: int = 2
    held_in: float = 0.5
    tolerance: int = 2  # steps within which a found boundary matches a true one
    model: ActionModelConfig = dataclasses.field(default_factory=ActionModelConfig)


def read_npz(args: Args) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` demonstrations file, trajectories first."""
    with np.load(args.data) as f:
        keys = set(f.files)
        for name in (args.obs_key, args.actions_key):
            require(name in keys, f"{args.data} has no array {name!r} (it has {sorted(keys)}); "
                    "name it with --obs-key / --actions-key")  # fmt: skip
        out = {"obs": f[args.obs_key], "actions": f[args.actions_key]}
        for name, key in (("starts", args.starts_key), ("boundaries", args.boundaries_key)):
            if key in keys:
                out[name] = f[key].astype(bool)
    if out["obs"].ndim == 2:  # one trajectory
        out = {k: v[None] for k, v in out.items()}
    return out


def read_minari(args: Args) -> dict[str, np.ndarray]:
    """A Minari dataset's episodes end to end, cut into rows of ``args.length`` steps."""
    data, _ = load_dataset(args.data.removeprefix("minari:"), args.dataset_root)
    ends = np.asarray(data.terminated | data.truncated)
    starts = np.concatenate([[True], ends[:-1]])
    lengths = np.diff(np.flatnonzero(np.concatenate([starts, [True]])))
    length = args.length or int(lengths.max())
    rows = len(ends) // length
    require(rows >= 1, f"{args.data} holds {len(ends)} steps, fewer than --length {length}")
    cut = lambda x: np.asarray(x)[: rows * length].reshape(rows, length, *np.shape(x)[1:])
    return {"obs": cut(data.obs), "actions": cut(data.action), "starts": cut(starts)}


def main(args: Args) -> dict:
    study = Study("discover", args)
    if (done := study.finished()) is not None:
        return done
    arrays = read_minari(args) if args.data.startswith("minari:") else read_npz(args)
    obs, actions = arrays["obs"], arrays["actions"]
    if np.issubdtype(actions.dtype, np.integer) and actions.ndim == obs.ndim - 1:
        space = spaces.Discrete(args.num_actions or int(actions.max()) + 1)
    else:
        space = spaces.Box(-np.inf, np.inf, actions.shape[2:], np.float32)
    true = arrays.get("boundaries")
    runs = [
        discover(
            obs,
            actions,
            space,
            starts=arrays.get("starts"),
            true_boundaries=true,
            gap=args.gap,
            min_len=args.min_len,
            model=args.model,
            held_in=args.held_in,
            tolerance=args.tolerance,
            seed=key,
        )
        for key in study.seed_keys("discover")
    ]
    first = runs[0]
    write_atomic(study.path / "segments.json", json.dumps(first.segments))
    boundary, nll = np.stack([r.boundary for r in runs]), np.stack([r.nll for r in runs])
    np.savez_compressed(study.path / "discovery.npz", boundary=boundary, nll=nll)
    _plot(study.path / "segments.png", first.nll, first.boundary, true)
    results = {
        "data": args.data,
        "trajectories": int(obs.shape[0]),
        "steps": int(obs.shape[1]),
        "action_space": repr(space),
        "gap": [r.gap for r in runs],
        "gap_rule": first.gap_rule,
        "segments_per_trajectory": float(np.mean([len(s) for s in first.segments])),
    }
    if true is not None:
        results["scores"] = {k: iqm_ci(np.array([r.scores[k] for r in runs])) for k in first.scores}
    return study.finish(results, _summary(results))


def _plot(path, nll: np.ndarray, boundary: np.ndarray, true: np.ndarray | None) -> None:
    rows = min(3, nll.shape[0])
    with figure(path, nrows=rows, size=(10.0, 2.2)) as axes:
        for i, ax in enumerate(np.atleast_1d(axes)):
            ax.plot(nll[i], lw=0.8, color="black")
            for t in np.flatnonzero(boundary[i]):
                ax.axvline(t, color="tab:red", lw=0.8, alpha=0.7)
            if true is not None:
                for t in np.flatnonzero(true[i]):
                    ax.axvline(t, color="tab:green", lw=2.0, alpha=0.3)
            ax.set_ylabel(f"NLL, traj. {i}")
        ax.set_xlabel("step (red: found boundaries; green: true)")


def _summary(r: dict) -> str:
    lines = [
        f"# Skill boundaries in {r['data']}",
        "",
        f"{r['trajectories']} trajectories of {r['steps']} steps, {r['action_space']}; gap "
        f"{', '.join(f'{g:.3g}' for g in r['gap'])} nats ({r['gap_rule']}); "
        f"{r['segments_per_trajectory']:.1f} segments per trajectory (seed 0).",
    ]
    if "scores" in r:
        prf = [r["scores"][k] for k in ("precision", "recall", "f1")]
        lines += ["", md_table(["precision", "recall", "F1"], [prf])]
    return "\n".join(lines) + "\n"


def paper() -> Args:
    """Accelerator scale: a 256-unit action model trained for 20k steps at batch 128."""
    model = ActionModelConfig(
        embed=(256,), gru_hidden=256, head=(256,), total_steps=20_000, batch_size=128, lr=1e-3
    )
    return Args(model=model)


PRESETS = {"cpu": Args, "paper": paper}


if __name__ == "__main__":
    main(cli(PRESETS))
