"""Kill -9 at random moments, resume, compare: does every run survive any kill?

For each entry point (a study's real CLI with small arguments): one uninterrupted run, then
``--kills`` runs each killed (SIGKILL, the whole process group) at a moment drawn uniformly over
the uninterrupted run's duration, started again until it finishes (killed again at most
``--max-kills`` times), and compared with the uninterrupted run: ``metrics.jsonl`` files byte
for byte, ``results.json`` value for value (wall-clock and throughput fields aside), exported
policies' parameters exactly. Prints per entry point: kills landed, runs that resumed to the
identical result, and the resume cost (total wall-clock of a killed run over the uninterrupted
one).

    python -m benchmarks.kill_resume                       # every entry point, 4 killed runs each
    python -m benchmarks.kill_resume --entries ppo --kills 10
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tyro

from benchmarks.timing import write_json

TINY_PPO = "--ppo.num-envs 4 --ppo.num-steps 16 --ppo.total-steps 3072 --ppo.num-minibatches 2"
TINY_GRU = "--ppo.num-envs 2 --ppo.num-steps 8 --ppo.total-steps 64 --ppo.update-epochs 1 "
TINY_GRU += "--ppo.num-minibatches 1 --ppo.hidden 8 --ppo.embed 8 --ppo.gru-hidden 8"
TINY_SAC = "--sac.num-steps 50 --sac.total-steps 600 --sac.learning-starts 100 "
TINY_SAC += "--sac.batch-size 32 --sac.buffer-size 600 --sac.hidden 16 16"

#: {name: (module, arguments)}; ``{tmp}`` is a folder shared by an entry point's runs (data).
ENTRIES: dict[str, tuple[str, str]] = {
    "ppo": ("experiments.ppo", f"--seeds 2 {TINY_PPO} --updates-per-chunk 4 --eval-envs 4"),
    "cultural_in_weights": (
        "experiments.cultural_in_weights",
        f"memory --seeds 2 {TINY_GRU} --task.num-symbols 3 --task.seq-len 4 --generations 3 "
        "--num-demos 2 --eval-episodes 2",
    ),
    "make_datasets": (
        "experiments.make_datasets",
        f"--tasks halfcheetah --snapshot-every 100 --dataset-steps 200 --collect-envs 2 "
        f'--env-kwargs \'{{"backend":"native","max_steps_in_episode":50}}\' {TINY_SAC} '
        "--root {run}/minari",
    ),
    "offline": (
        "experiments.offline",
        "--seeds 2 --algos iql --tasks halfcheetah --levels medium --total-steps 400 "
        "--eval-every 100 --eval-episodes 2 --iql.hidden 16 --iql.batch-size 32 "
        "--root {tmp}/minari",
    ),
    "quickstart": (
        "experiments.quickstart",
        "--seeds 2 --gridworld-steps 4096 --memory-seeds 2 --memory-steps 1024 --eval-episodes 4",
    ),
}
#: results.json keys that measure the machine, not the run: seconds and rates (``*_s``).
is_clock = lambda key: key.endswith("_s") or key == "timing"


@dataclasses.dataclass
class Args:
    entries: tuple[str, ...] = tuple(ENTRIES)
    kills: int = 4  # killed runs per entry point
    max_kills: int = 3  # kills per run at most (then it runs to the end)
    seed: int = 0
    keep: bool = False  # keep the run folders (printed) instead of deleting them
    out: str = "results/benchmarks/kill_resume.json"


def command(entry: str, run: Path, tmp: Path) -> list[str]:
    module, argv = ENTRIES[entry]
    argv = argv.replace("{run}", str(run)).replace("{tmp}", str(tmp))
    return [
        sys.executable,
        "-m",
        module,
        *shlex.split(argv),
        "--out",
        str(run / "out"),
        "--no-progress",
    ]


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with log.open("a") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=f, env=env, start_new_session=True)


def run_to_end(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    if launch(cmd, log).wait() != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return time.perf_counter() - t0


def killed_run(cmd: list[str], log: Path, duration: float, rng: random.Random, max_kills: int):
    """Run ``cmd`` killing it at random moments until it finishes: (kills landed, wall s)."""
    kills, t0 = 0, time.perf_counter()
    while True:
        proc = launch(cmd, log)
        if kills < max_kills:
            try:
                proc.wait(timeout=rng.uniform(0.05, 1.0) * duration)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        if proc.wait() != 0:
            raise RuntimeError(f"a resumed {' '.join(cmd)} failed; see {log}")
        return kills, time.perf_counter() - t0


def results_of(folder: Path) -> dict:
    """Every results.json under ``folder`` by relative path, clock fields dropped."""

    def drop(x):
        if isinstance(x, dict):
            return {k: drop(v) for k, v in x.items() if not is_clock(k)}
        return [drop(v) for v in x] if isinstance(x, list) else x

    return {
        str(p.relative_to(folder)): drop(json.loads(p.read_text()))
        for p in sorted(folder.rglob("results.json"))
    }


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two runs' folders: metrics files, results, exported policies."""
    diff = []
    for m in sorted(a.rglob("metrics.jsonl")):
        other = b / m.relative_to(a)
        if not other.exists() or not filecmp.cmp(m, other, shallow=False):
            diff.append(str(m.relative_to(a)))
    if results_of(a) != results_of(b):
        diff.append("results.json")
    for policy in sorted(a.rglob("policy/policy.json")):
        other = b / policy.relative_to(a)
        if not other.exists() or not _same_params(policy.parent, other.parent):
            diff.append(str(policy.parent.relative_to(a)))
    return diff


def _same_params(a: Path, b: Path) -> bool:
    from agents.core import load_policy

    pa, pb = load_policy(a)[1], load_policy(b)[1]
    import jax

    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), pa, pb)))


def main(args: Args) -> dict:
    unknown = set(args.entries) - set(ENTRIES)
    if unknown:
        raise ValueError(f"unknown entries {sorted(unknown)}; choose from {list(ENTRIES)}")
    rng, table = random.Random(args.seed), {}
    for entry in args.entries:
        tmp = Path(tempfile.mkdtemp(prefix=f"kill-{entry}-"))
        log = tmp / "log.txt"
        if entry == "offline":  # its datasets, made once, outside the runs compared
            _datasets(tmp)
        reference = tmp / "reference"
        duration = run_to_end(command(entry, reference, tmp), log)
        rows = []
        for i in range(args.kills):
            run = tmp / f"killed-{i}"
            kills, wall = killed_run(command(entry, run, tmp), log, duration, rng, args.max_kills)
            rows.append({"kills": kills, "wall_s": wall, "differs": differences(reference, run)})
        identical = sum(not r["differs"] for r in rows)
        table[entry] = {"uninterrupted_s": duration, "runs": rows, "identical": identical}
        landed = sum(r["kills"] for r in rows)
        cost = np.mean([r["wall_s"] for r in rows]) / duration
        print(
            f"{entry:22s} {landed:3d} kills in {len(rows)} runs: {identical}/{len(rows)} resumed "
            f"identical; killed runs took {cost:.2f}x the uninterrupted {duration:.0f} s",
            flush=True,
        )
        for r in rows:
            if r["differs"]:
                print(f"    differs after {r['kills']} kills: {r['differs']}", flush=True)
        if args.keep:
            print(f"    runs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(args.out, {"args": dataclasses.asdict(args), "entries": table})
    return table


def _datasets(tmp: Path) -> None:
    """Tiny HalfCheetah medium data under ``tmp/minari`` as ``make_datasets`` names it."""
    cmd = command("make_datasets", tmp, tmp)
    cmd[cmd.index("--out") + 1] = str(tmp / "datasets-run")
    run_to_end(cmd, tmp / "log.txt")


if __name__ == "__main__":
    main(tyro.cli(Args))
