"""Study plots on rliable's interval estimates and plotting utilities (matplotlib, headless).

    plot_curves(path, x, {"PPO": returns [S, N]}, "env steps", "return", "PPO on CartPole")
    plot_intervals(path, {"IQL": scores [S], "TD3+BC": scores [S]}, "normalised score")
    with figure(path, ncols=2) as (left, right): ...       # any other plot, saved and closed
    write_gif(path, frames [T, H, W, 3])                   # a policy's video (study.write_video)
    segment_strip(path, frames [T, H, W, 3], boundary [T]) # frames framed by detected segment
    plot_segmented(path, {"NLL": nll [T]}, true [T], detected [T])  # one segmented trajectory

Curves and intervals are the interquartile mean over seeds with 95% stratified-bootstrap
confidence intervals, as ``experiments.runner.iqm_ci`` reports them in tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from experiments.runner import iqm

__all__ = [
    "figure",
    "iqm_curves",
    "plot_curves",
    "plot_detection",
    "plot_intervals",
    "plot_moments",
    "plot_pr",
    "plot_profiles",
    "plot_segmented",
    "segment_strip",
    "segment_video",
    "write_gif",
]

MAX_POINTS = 100  # curve points bootstrapped (long curves are subsampled evenly)


@contextlib.contextmanager
def figure(
    path: str | Path, ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.0, 4.0)
) -> Iterator[Any]:
    """Axes of a ``nrows x ncols`` figure (one Axes, or an array), saved to ``path`` as PNG."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows))
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
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


def iqm_curves(
    curves: Mapping[str, np.ndarray], reps: int = 200, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """IQM over seeds of each [S, N] curve and its 95% bootstrap CI: ({name: [N]}, {name: [2, N]}).

    Points with no finite value yet (before any episode ended) stay NaN.
    """
    from rliable import library as rly

    scores = {name: _ffill(y)[:, None, :] for name, y in curves.items()}  # [S, 1 task, N]
    per_point = lambda s: np.array([iqm(s[..., i]) for i in range(s.shape[-1])])
    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    return rly.get_interval_estimates(scores, per_point, reps=reps)


def plot_curves(
    path: str | Path,
    x: np.ndarray,
    curves: Mapping[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    title: str,
    hlines: Mapping[str, tuple[float, float, float]] | None = None,
) -> None:
    """IQM over seeds (line) with its 95% CI (band) of each named [S, N] curve over ``x`` [N];
    ``hlines`` are reference levels ``(point, lo, hi)`` drawn across."""
    from rliable import plot_utils

    x = np.asarray(x)
    pick = np.unique(np.linspace(0, x.size - 1, min(x.size, MAX_POINTS)).round().astype(int))
    points, intervals = iqm_curves({k: np.asarray(v)[:, pick] for k, v in curves.items()})
    labels = {name: f"{name} ({np.shape(y)[0]} seeds)" for name, y in curves.items()}
    with figure(path, size=(6.5, 4.0)) as ax:
        plot_utils.plot_sample_efficiency_curve(
            x[pick],
            {labels[k]: v for k, v in points.items()},
            {labels[k]: v for k, v in intervals.items()},
            xlabel=xlabel,
            ylabel=ylabel,
            ax=ax,
            labelsize="medium",
            ticklabelsize="small",
            marker="" if pick.size > 20 else "o",
        )
        for i, (name, (point, lo, hi)) in enumerate((hlines or {}).items()):
            colour = f"C{len(curves) + i}"
            ax.axhline(point, ls="--", color=colour, label=name)
            ax.axhspan(lo, hi, alpha=0.12, color=colour)
        ax.set_title(title)
        ax.legend(fontsize=8)


def plot_intervals(
    path: str | Path, scores: Mapping[str, np.ndarray], xlabel: str, title: str = ""
) -> None:
    """IQM and 95% bootstrap CI of each named set of per-seed ``scores`` [S] (rliable's interval
    plot), with the seeds' own values as dots."""
    from rliable import library as rly
    from rliable import plot_utils

    data = {name: np.asarray(v, np.float64).reshape(-1, 1) for name, v in scores.items()}
    np.random.seed(0)
    points, intervals = rly.get_interval_estimates(data, lambda s: np.array([iqm(s)]), reps=2000)
    fig, axes = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=[xlabel],
        algorithms=list(data),
        xlabel=xlabel,
        subfigure_width=6.0,
        row_height=0.5,
        xlabel_y_coordinate=-0.3,
    )
    ax = np.ravel([axes])[0]
    for i, name in enumerate(data):
        ax.scatter(data[name][:, 0], np.full(len(data[name]), i), color="k", s=8, zorder=3)
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_profiles(path: str | Path, scores: Mapping[str, np.ndarray], xlabel: str) -> None:
    """Performance profiles (rliable): for each named set of per-seed ``scores`` [S], the
    fraction of seeds scoring above each threshold, with 95% bootstrap bands."""
    from rliable import library as rly
    from rliable import plot_utils

    data = {name: np.asarray(v, np.float64).reshape(-1, 1) for name, v in scores.items()}
    values = np.concatenate([v.ravel() for v in data.values()])
    taus = np.linspace(values.min(), values.max(), 101) if values.size else np.zeros(1)
    np.random.seed(0)
    profiles, cis = rly.create_performance_profile(data, taus, reps=2000)
    with figure(path, size=(7.0, 4.5)) as ax:
        plot_utils.plot_performance_profiles(
            profiles, taus, performance_profile_cis=cis, ax=ax, xlabel=xlabel,
            ylabel="fraction of seeds above",
        )  # fmt: skip
        ax.legend(ax.get_lines()[: len(data)], list(data), fontsize=8)


def plot_moments(path: str | Path, per_dimension: Mapping[str, Any]) -> None:
    """Synthetic against real per-dimension mean and std (``agents.synther.quality``'s
    ``per_dimension``), one scatter each beside the identity line."""
    with figure(path, ncols=2, size=(4.5, 4.0)) as axes:
        for ax, stat in zip(axes, ("mean", "std")):
            x, y = (np.array(per_dimension[f"{k}_{stat}"]) for k in ("real", "synthetic"))
            ax.scatter(x, y, s=12)
            lim = [min(x.min(), y.min()), max(x.max(), y.max())]
            ax.plot(lim, lim, "k--", lw=0.8)
            ax.set(xlabel=f"real {stat}", ylabel=f"synthetic {stat}")
            ax.set_title(f"per-dimension {stat} of [s, a, r, s', done]")


def plot_pr(ax: Any, curves: Mapping[str, tuple[Mapping[str, Any], str]], xlabel: str) -> None:
    """Each named precision-recall sweep ({"precision": [S, N], "recall": [S, N]}, line style)
    as the IQM over seeds of its points, on ``ax``."""
    per_point = lambda v: [iqm(np.asarray(v)[:, i]) for i in range(np.shape(v)[1])]
    for name, (c, style) in curves.items():
        ax.plot(per_point(c["recall"]), per_point(c["precision"]), style, label=name)
    ax.set(xlabel=xlabel, ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))


def plot_detection(
    path: str | Path,
    scores: Mapping[str, Mapping[str, Any]],
    arms: Mapping[str, tuple[str, str]],
    gaps: Sequence[float],
    points: Mapping[str, tuple[Mapping[str, Any], str]] | None = None,
) -> None:
    """``pr_curve.png`` and ``f1_vs_gap.png`` in folder ``path`` from ``skills.sbd.
    detection_scores`` per tolerance ({tolerance: scores}, per-seed sweeps [S, G]): one PR
    panel per tolerance with each SBD arm's gap sweep ({arm: (label, line style)}) beside the
    fixed-length and random sweeps (and ``points``: {label: (IQM CIs of precision and recall,
    marker)} on the first panel), and each arm's F1 over the gap beside the baselines' best."""
    path, tols = Path(path), list(scores)
    seeds = len(scores[tols[0]]["pr"][next(iter(arms))]["f1"])
    with figure(path / "pr_curve.png", ncols=len(tols), size=(5.5, 4.5)) as axes:
        for ax, tol in zip(np.ravel([axes]), tols):
            s = scores[tol]
            curves = {f"{label} (gap sweep)": (s["pr"][a], st) for a, (label, st) in arms.items()}
            curves["fixed length (length sweep)"] = (s["fixed_pr"], "^:")
            curves["random (rate sweep)"] = (s["random_pr"], "x:")
            plot_pr(ax, curves, f"recall (+-{tol} steps)")
            for label, (ci, marker) in (points or {}).items() if tol == tols[0] else ():
                ax.plot([ci["recall"][0]], [ci["precision"][0]], marker, ms=10, label=label)
            ax.set_title(f"+-{tol} steps, IQM over {seeds} seeds")
            ax.legend(fontsize=8)
    name = lambda label, tol: label if len(tols) == 1 else f"{label}, +-{tol}"
    f1 = {name(label, t): scores[t]["pr"][a]["f1"] for t in tols for a, (label, _) in arms.items()}
    first = scores[tols[0]]
    best = {
        name("fixed length (best)", tols[0]): first["fixed_best_f1"],
        name("random (best rate)", tols[0]): first["random_best_f1"],
    }
    plot_curves(path / "f1_vs_gap.png", gaps, f1, "gap (nats)", "F1", "F1 over the gap", best)


def plot_heatmaps(
    path: str | Path,
    matrices: Mapping[str, Any],
    names: Sequence[str],
    xlabel: str = "evaluated on task",
    ylabel: str = "after learning task",
    limits: tuple[float, float] = (0.0, 100.0),
) -> None:
    """One annotated heatmap per entry of ``matrices`` {label: [len(names), len(names)]} (e.g.
    a continual learner's normalised return matrix R: row i after learning task i, column j
    evaluated on task j), colours over ``limits``."""
    cols = min(len(matrices), 4)
    rows = -(-len(matrices) // cols)
    with figure(path, ncols=cols, nrows=rows, size=(4.2, 3.8)) as axes:
        axes = np.ravel([axes])
        for ax, (label, r) in zip(axes, matrices.items()):
            image = ax.imshow(np.asarray(r), vmin=limits[0], vmax=limits[1], cmap="viridis")
            for (i, j), v in np.ndenumerate(np.asarray(r)):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_xticks(range(len(names)))
            ax.set_yticks(range(len(names)))
            ax.figure.colorbar(image, ax=ax, shrink=0.8)
        for ax in axes[len(matrices) :]:
            ax.axis("off")


def plot_segmented(
    path: str | Path,
    nll: Mapping[str, np.ndarray],
    true: np.ndarray,
    detected: np.ndarray,
    behaviour: np.ndarray | None = None,
    names: Sequence[str] = (),
    signals: Mapping[str, np.ndarray] | None = None,
) -> None:
    """One trajectory's NLL curves {label: [T]} with its true (green) and detected (red, dashed)
    boundaries (bool [T]; step 0 left out); with ``behaviour`` (int [T], ``names`` its labels), a
    panel above shading the acting behaviour under ``signals`` {label: [T]}."""
    rows = 1 if behaviour is None else 2
    with figure(path, nrows=rows, size=(9, 3) if rows == 1 else (11, 2.75)) as axes:
        ax = axes if rows == 1 else axes[1]
        if behaviour is not None:
            steps, top = np.arange(len(behaviour)), axes[0]
            shade = {"alpha": 0.15, "step": "post", "transform": top.get_xaxis_transform()}
            for b, name in enumerate(names):
                top.fill_between(steps, -1, 1, where=behaviour == b, label=name, **shade)
            for (label, y), colour in zip((signals or {}).items(), "km"):
                top.plot(steps, y, colour, lw=1, label=label)
            top.legend(loc="upper right", fontsize=7, ncol=5)
        for label, y in nll.items():
            ax.plot(np.arange(len(y)), y, lw=1, label=label)
        for i, b in enumerate(np.flatnonzero(true[1:]) + 1):
            ax.axvline(b, color="g", alpha=0.6, label="true switch" if i == 0 else None)
        for i, b in enumerate(np.flatnonzero(detected[1:]) + 1):
            ax.axvline(b, color="r", ls="--", alpha=0.8, label="detected" if i == 0 else None)
        ax.set(xlabel="step", ylabel="nats")
        ax.legend(loc="upper right", fontsize=7)


def segment_video(folder: str | Path, frames: np.ndarray, boundary: np.ndarray) -> None:
    """``folder/segments.png`` (about 24 of ``frames`` [T, H, W, 3], framed by the segments that
    ``boundary`` [T] opens) and ``folder/demonstration.gif`` (all of them)."""
    frames, folder = np.asarray(frames), Path(folder)
    segment_strip(folder / "segments.png", frames, boundary, len(frames) // 24 or 1)
    write_gif(folder / "demonstration.gif", frames)


def write_gif(path: str | Path, frames: np.ndarray, fps: int = 25, width: int = 240) -> Path:
    """``frames`` uint8 [T, H, W, 3] as a looping GIF at ``fps``, scaled to ``width`` pixels."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    size = (width, max(1, round(width * frames.shape[1] / frames.shape[2])))
    images = [Image.fromarray(f).resize(size, Image.NEAREST) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )
    return Path(path)


def segment_strip(
    path: str | Path,
    frames: np.ndarray,
    boundary: np.ndarray,
    every: int = 1,
    height: int = 96,
    border: int = 4,
) -> Path:
    """A strip of ``frames`` uint8 [T, H, W, 3] (every ``every``-th, scaled to ``height``
    pixels), each framed in its segment's colour (``boundary`` bool [T]: steps that open a
    segment), saved as a PNG."""
    from PIL import Image

    frames, boundary = np.asarray(frames), np.asarray(boundary, bool)
    if len(frames) != len(boundary):
        raise ValueError(f"{len(frames)} frames but {len(boundary)} boundary flags")
    segment = np.cumsum(boundary | (np.arange(len(boundary)) == 0)) - 1
    colours = (np.asarray(plt.get_cmap("tab10").colors) * 255).astype(np.uint8)
    tiles = []
    for t in range(0, len(frames), every):
        width = max(1, round(height * frames.shape[2] / frames.shape[1]))
        frame = np.asarray(Image.fromarray(frames[t]).resize((width, height), Image.BILINEAR))
        tile = np.pad(frame, ((border, border), (border, border), (0, 0)))
        tile[:border], tile[-border:] = colours[segment[t] % 10], colours[segment[t] % 10]
        tile[:, :border], tile[:, -border:] = colours[segment[t] % 10], colours[segment[t] % 10]
        tiles.append(tile)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
    return Path(path)
