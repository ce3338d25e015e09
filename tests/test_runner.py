"""The runner: resume after a stop reproduces an uninterrupted run; files and aggregates."""

import json
import warnings

import jax
import numpy as np
import pytest

import envs
from agents.checkpoint import Checkpointer, CheckpointError
from agents.ppo import PPOConfig, make_ppo
from experiments.runner import (
    ChunkClock,
    DivergenceError,
    RunFolder,
    fmt_ci,
    iqm_ci,
    iqm_ci_columns,
    md_table,
    run_chunked,
    run_loop,
)

ENV = envs.make("gymnax:CartPole-v1")
CFG = PPOConfig(num_envs=4, num_steps=16, total_steps=4 * 16 * 6, num_minibatches=2)


AGENT = make_ppo(CFG, *ENV)  # one agent: its chunk program compiles once for every run here


def _run(path, stop_after_saves=None, config=None):
    folder = RunFolder(path, config or {"cfg": "tiny"})
    return run_chunked(AGENT, jax.random.key(0), 2, folder, updates_per_chunk=2, progress=False)


def test_resume_after_stop_matches_uninterrupted(tmp_path, monkeypatch):
    full, full_metrics, _ = _run(tmp_path / "a")

    saves = {"n": 0}
    original = Checkpointer.save

    def crash_after_first_save(self, step, state):
        original(self, step, state)
        saves["n"] += 1
        if saves["n"] == 1:
            raise KeyboardInterrupt("simulated stop")

    monkeypatch.setattr(Checkpointer, "save", crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b")
    monkeypatch.setattr(Checkpointer, "save", original)
    assert Checkpointer(tmp_path / "b" / "checkpoints", {"cfg": "tiny"}).latest_step() == 2
    resumed, resumed_metrics, timing = _run(tmp_path / "b")
    assert timing["train_s"] > timing["compile_s"] + timing["run_s"]  # the first process counts

    for x, y in zip(
        jax.tree.leaves(full.train_state.params), jax.tree.leaves(resumed.train_state.params)
    ):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(full_metrics["value_loss"], resumed_metrics["value_loss"])
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["update"] for line in lines] == list(range(CFG.num_updates))


def test_resume_with_another_config_is_refused(tmp_path):
    step = lambda state, start, n: (state + n, {"x": np.zeros(n)})
    run_loop(RunFolder(tmp_path, {"cfg": "tiny"}), np.zeros(()), step, total=2)
    with pytest.raises(CheckpointError, match="cfg: stored 'tiny', given 'other'"):
        run_loop(RunFolder(tmp_path, {"cfg": "other"}), np.zeros(()), step, total=2)


def test_a_run_resumed_on_another_machine_says_so(tmp_path):
    """The first machine is kept in machine.json; reopening the folder on the same one is
    silent, on another (here: another CPU recorded) a warning names what differs."""
    RunFolder(tmp_path, {"cfg": "tiny"})
    first = json.loads((tmp_path / "machine.json").read_text())
    assert first["cpu"]["machine"] and first["backend"] == jax.default_backend()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RunFolder(tmp_path, {"cfg": "tiny"})
    first["cpu"] = {**first["cpu"], "isa": ["sse4_2"]}
    (tmp_path / "machine.json").write_text(json.dumps(first))
    with pytest.warns(UserWarning, match=r"another machine \(its machine.json differs in cpu\)"):
        RunFolder(tmp_path, {"cfg": "tiny"})


def test_iqm_ci_brackets_the_iqm():
    point, lo, hi = iqm_ci(np.arange(10.0))
    assert lo <= point <= hi
    assert point == pytest.approx(4.5)
    assert fmt_ci((point, lo, 5.256)) == f"4.50 [{lo:.2f}, 5.26]"
    assert fmt_ci([48.14, 40.0, 50.5], 1) == "48.1 [40.0, 50.5]"


def test_iqm_ci_columns_is_one_interval_per_column():
    x = np.stack([np.arange(10.0), 10 * np.arange(10.0)], axis=1)  # [seeds, 2]
    assert iqm_ci_columns(x) == [iqm_ci(np.arange(10.0)), iqm_ci(10 * np.arange(10.0))]
    assert iqm_ci_columns(x)[1][0] == pytest.approx(45.0)


def test_md_table_formats_intervals_and_pads_short_rows():
    table = md_table(["arm", "score", "note"], [("a", (1.0, 0.5, 1.25), "x"), ["b", [2, 1, 3]]])
    assert table == (
        "| arm | score | note |\n|---|---|---|\n"
        "| a | 1.00 [0.50, 1.25] | x |\n| b | 2.00 [1.00, 3.00] |  |"
    )


def test_chunk_clock_times_chunks_after_the_first(tmp_path):
    seen = []
    clock = ChunkClock(lambda start, n, metrics: seen.append((start, n)))
    step = lambda state, start, n: (state + n, {"x": np.zeros(n)})
    run_loop(RunFolder(tmp_path, {"loop": 1}), np.zeros(()), step, total=5, chunk=2, on_chunk=clock)
    assert seen == [(0, 2), (2, 2), (4, 1)] and len(clock.stamps) == 4
    assert clock.median_s == pytest.approx(np.median(np.diff(clock.stamps)[1:]))
    assert np.isnan(ChunkClock().median_s)  # no chunk ran (a finished run resumed)


def test_run_loop_resumes_a_generic_loop(tmp_path):
    """Any chunked loop (e.g. generations) resumes from its last checkpoint, lines intact."""
    step = lambda state, start, n: (state + n, {"x": np.arange(start, start + n) * 1.5})
    folder = RunFolder(tmp_path, {"loop": 1})
    state, lines = run_loop(folder, np.zeros(()), step, total=3, chunk=2)
    assert float(state) == 3 and [m["x"] for m in lines] == [0.0, 1.5, 3.0]
    state, lines = run_loop(RunFolder(tmp_path, {"loop": 1}), np.zeros(()), step, total=5)
    assert float(state) == 5 and [m["update"] for m in lines] == [0, 1, 2, 3, 4]


def test_iqm_is_rliables_aggregate_iqm():
    from rliable import metrics

    from experiments.runner import iqm

    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 5, 8, 13):
        x = rng.normal(size=(n, 1))
        assert iqm(x) == pytest.approx(metrics.aggregate_iqm(x), abs=1e-12)


def _counting_step(state, start, n):
    return state + n, {"x": np.arange(start, start + n) * 1.5}


def test_a_torn_last_metrics_line_resumes_and_a_lost_file_is_named(tmp_path):
    """A kill mid-append leaves a torn last line: dropped on resume. Lines missing before the
    checkpoint (a deleted or truncated file) stop the run with the file named."""
    run_loop(RunFolder(tmp_path / "a", {"loop": 1}), np.zeros(()), _counting_step, total=4)
    folder = RunFolder(tmp_path / "b", {"loop": 1})
    run_loop(folder, np.zeros(()), _counting_step, total=2)
    with folder.metrics_file.open("a") as f:
        f.write('{"update": 2, "x"')  # torn
    run_loop(RunFolder(tmp_path / "b", {"loop": 1}), np.zeros(()), _counting_step, total=4)
    same = lambda p: (p / "metrics.jsonl").read_text()
    assert same(tmp_path / "a") == same(tmp_path / "b")

    folder.metrics_file.write_text('{"update": 0, "x": 0.0}\nnot json\n{"update": 2, "x": 3.0}\n')
    with pytest.raises(ValueError, match="line 2, is not JSON"):
        folder.read_metrics()
    folder.metrics_file.unlink()
    with pytest.raises(ValueError, match="holds 0 of the 4 lines before the last checkpoint"):
        run_loop(folder, np.zeros(()), _counting_step, total=6)


def test_a_second_process_on_a_run_folder_is_stopped(tmp_path):
    """One process per folder (a lock that dies with its process); the same process may reopen."""
    import subprocess
    import sys
    from pathlib import Path

    from experiments import runner
    from experiments.runner import FolderBusy

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from experiments.runner import RunFolder; "
         f"f = RunFolder({str(tmp_path)!r}, {{}}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=f"pid {holder.pid}.*another output folder"):
            RunFolder(tmp_path, {})
    finally:
        holder.kill()
        holder.wait()
    first = RunFolder(tmp_path, {})  # the kill released it
    RunFolder(tmp_path, {})  # and this process may open it again
    del first  # the last holder gone, the lock is free for others
    assert Path(tmp_path).absolute() not in runner._LOCKS


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    def step(state, start, n):  # the loss turns NaN at update 7 (and explodes in seed 1 at 8)
        updates = np.arange(start, start + n)[:, None]
        loss = np.where(updates >= 7, np.nan, 1.0) * np.ones((1, 2))
        loss[:, 1] = np.where(updates[:, 0] >= 6, 1e13, 1.0)
        return state + n, {"critic_loss": loss, "return": np.full((n, 2), np.nan)}

    folder = RunFolder(tmp_path, {"loop": 1})
    with pytest.raises(DivergenceError, match=r"critic_loss = 1e\+13 at update 6 \(seed or run "
                       r"index \[1\].*step 5\) is kept"):  # fmt: skip
        run_loop(folder, np.zeros(()), step, total=20, chunk=5)
    assert Checkpointer(tmp_path / "checkpoints", {"loop": 1}).latest_step() == 5
    assert len(folder.read_metrics()) == 5  # NaN returns (no episode ended) are no divergence


def test_a_diverging_agent_stops_before_its_nan_weights_are_saved(tmp_path):
    agent = make_ppo(CFG.replace(lr=1e30, max_grad_norm=1e30), *ENV)
    with pytest.raises(DivergenceError, match="diverged"):
        run_chunked(agent, jax.random.key(0), 2, RunFolder(tmp_path, {}), 3, progress=False)
    assert Checkpointer(tmp_path / "checkpoints", {}).latest_step() is None


def growing_agent(num_updates: int = 6):
    """A toy agent whose weight grows by a per-seed factor each update: 1.5 for a seed whose key
    draws above 0.5 (it passes ``loss_limit=1e3`` at update 17) and 0.5 otherwise."""
    from agents.core import Agent, Policy

    def init(key):
        return {"w": jax.numpy.ones(()), "rate": jax.numpy.where(
            jax.random.uniform(key) > 0.5, 1.5, 0.5)}  # fmt: skip

    def update(state):
        state = {**state, "w": state["w"] * state["rate"]}
        return state, {"loss": state["w"], "return": 1.0 / state["w"]}

    policy = Policy(lambda p, c, o, k, d: (c, o), lambda b: (), {})
    return Agent(policy, init, update, update, lambda s: s, num_updates, 1, "gradient steps")


@pytest.mark.filterwarnings("ignore:seed .* diverged")
def test_diverged_seeds_are_excluded_and_stay_excluded_on_resume(tmp_path):
    keys = jax.random.split(jax.random.key(0), 4)
    grows = np.array([float(jax.random.uniform(k)) > 0.5 for k in keys])
    assert grows.any() and not grows.all()  # the fixture: some seeds diverge, some do not
    agent = growing_agent(24)
    run = lambda path, chunk: run_chunked(
        agent, jax.random.key(0), 4, RunFolder(path, {}), chunk, False, True, loss_limit=1e3
    )
    with pytest.raises(DivergenceError, match="update 17"):  # the default stops the run
        run_chunked(agent, jax.random.key(0), 4, RunFolder(tmp_path / "stop", {}), 8, False,
                    loss_limit=1e3)  # fmt: skip
    with pytest.warns(UserWarning, match="diverged at update 17"):
        _, metrics, timing = run(tmp_path / "a", 8)
    assert timing["diverged_seeds"] == np.flatnonzero(grows).tolist()
    assert np.isnan(metrics["loss"][grows, 17:]).all()
    assert np.isfinite(metrics["loss"][grows, :17]).all()
    assert np.isfinite(metrics["loss"][~grows]).all()
    assert Checkpointer(tmp_path / "a" / "checkpoints", {}).latest_step() == 24  # it went on

    # stopped after the divergence (the first 16 updates, then 8 more): the same result
    run_chunked(growing_agent(16), jax.random.key(0), 4, RunFolder(tmp_path / "b", {}), 8,
                False, True, loss_limit=1e3)  # fmt: skip
    _, resumed, again = run(tmp_path / "b", 8)
    assert again["diverged_seeds"] == timing["diverged_seeds"]
    np.testing.assert_array_equal(resumed["loss"], metrics["loss"])

    everyone = growing_agent(24)
    everyone.init = lambda key: {"w": jax.numpy.ones(()), "rate": jax.numpy.array(1.5)}
    with pytest.raises(DivergenceError, match="every seed"):
        run_chunked(everyone, jax.random.key(0), 2, RunFolder(tmp_path / "c", {}), 8, False,
                    True, loss_limit=1e3)  # fmt: skip


def test_bad_settings_are_named_before_training(monkeypatch):
    import agents.hparams

    with pytest.raises(ValueError, match=r"PPOConfig.lr=inf is invalid; it must be finite"):
        make_ppo(CFG.replace(lr=float("inf")), *ENV)
    with pytest.raises(ValueError, match=r"PPOConfig.hidden=\(64, 0\) is invalid; layer sizes"):
        make_ppo(CFG.replace(hidden=(64, 0)), *ENV)
    huge = CFG.replace(num_envs=20_000_000, total_steps=20_000_000 * 16)
    with pytest.raises(ValueError, match=r"past what XLA indexes \(2\^31\); use fewer envs"):
        make_ppo(huge, *ENV)
    monkeypatch.setattr(agents.hparams, "available_memory", lambda device=None: 1000)
    with pytest.raises(ValueError, match=r"one PPO rollout needs about .* GiB but only"):
        make_ppo(CFG, *ENV)


def test_a_finished_runs_unreadable_results_are_recomputed(tmp_path):
    from experiments.runner import stored_results

    assert stored_results(tmp_path / "results.json") is None
    (tmp_path / "results.json").write_text('{"score": 1')  # truncated
    assert stored_results(tmp_path / "results.json") is None
    (tmp_path / "results.json").write_text('{"score": 1}')
    assert stored_results(tmp_path / "results.json") == {"score": 1}


def test_the_bad_input_campaign_sorts_its_cases(tmp_path):
    """``tests/bad_inputs.py`` (the README's campaign) on its cheapest cases."""
    import bad_inputs

    totals = bad_inputs.main(bad_inputs.Args(only="discrete", out=str(tmp_path / "b.json")))
    assert totals == {"named": 8, "counted": 0, "opaque": 0, "silent": 0}
    assert bad_inputs.outcome(lambda: None, "anything")[0] == "silent"
    assert bad_inputs.outcome(lambda: 1 / 0, "named thing")[0] == "opaque"
