"""Metrics to TensorBoard and W&B (experiments.loggers): what is logged, where, at which step."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from experiments import loggers
from experiments.runner import RunFolder


def read_events(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the TensorBoard event files in ``folder`` (TFRecord framing)."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_lines_become_scalars_per_seed_and_their_mean_over_finite_seeds():
    line = {"update": 3, "loss": [1.0, 3.0, float("nan")], "score": [[1.0, 2.0], [3.0, 4.0]]}
    line |= {"note": "text", "lr": 0.5, "diverged": [False, True, False]}
    (stage, step, values), *_ = loggers.points([line])
    assert (stage, step) == ("", 3)
    assert values["loss"] == 2.0 and values["loss/seed_1"] == 3.0
    assert math.isnan(values["loss/seed_2"])
    assert values["score/0"] == 2.0 and values["score/1"] == 3.0  # per entry, mean over seeds
    assert values["lr"] == 0.5 and values["diverged"] == pytest.approx(1 / 3)
    assert "note" not in values and "update" not in values
    # a stage's lines indexed by a non-integer (a swept gap): their place is the step
    swept = [{"stage": "pr", "gap": g, "f1": [0.5]} for g in (2.5, 7.5)]
    assert [(s, t, v["gap"]) for s, t, v in loggers.points(swept)] == [
        ("pr", 0, 2.5),
        ("pr", 1, 7.5),
    ]


def test_run_folders_under_an_open_study_log_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    outside = RunFolder(tmp_path / "elsewhere", {})
    with loggers.opened(["tensorboard", "wandb"], tmp_path / "study", {"lr": 1e-3}):
        (wandb_logger,) = [m for r, m in loggers._ACTIVE if isinstance(m, loggers.WandB)]
        folder = RunFolder(tmp_path / "study" / "arm-a", {})
        folder.append_metrics([{"update": i, "loss": [i, 2.0 * i]} for i in range(3)])
        folder.append_metrics([{"update": 3, "loss": [9.0, 9.0]}])
        outside.append_metrics([{"update": 0, "loss": [5.0]}])  # not under the study
        summary = dict(wandb_logger.run.summary)
    assert loggers._ACTIVE == []
    events = read_events(tmp_path / "study" / "tensorboard" / "arm-a")
    assert events["loss"] == {0: 0.0, 1: 1.5, 2: 3.0, 3: 9.0}
    assert events["loss/seed_1"][2] == 4.0
    assert not (tmp_path / "study" / "tensorboard" / "elsewhere").exists()
    assert summary["arm-a/loss"] == 9.0 and summary["arm-a/step"] == 3
    assert list((tmp_path / "study" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_an_unknown_logger_is_named(tmp_path):
    with (
        pytest.raises(ValueError, match=r"unknown logger.*choose from"),
        loggers.opened(["tensorbord"], tmp_path, {}),
    ):
        pass


def test_a_study_logs_with_the_cli_flag(tmp_path):
    from experiments import ppo

    args = ppo.Args(out=str(tmp_path), seeds=2, progress=False, eval_envs=2, log=("tensorboard",))
    args.ppo = args.ppo.replace(num_envs=2, num_steps=8, total_steps=64, num_minibatches=1)
    ppo.main(args)
    events = read_events(tmp_path / "tensorboard" / "main")
    lines = RunFolder(tmp_path, {}).read_metrics()
    assert sorted(events["return"]) == [m["update"] for m in lines]
    last = lines[-1]
    np.testing.assert_allclose(
        events["return"][last["update"]], np.nanmean(last["return"]), rtol=1e-6
    )
