"""Timing shared by the benchmarks: compile once, then the median of repeated runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from envs.platform import describe


def timed(fn: Callable[..., Any], *args: Any, repeats: int) -> tuple[float, float]:
    """(compile seconds, median run seconds) of ``jax.jit(fn)(*args)`` over ``repeats`` runs."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


def write_json(out: str | None, result: Any) -> Any:
    """Write ``{"figures": result, "machine": envs.platform.describe()}`` to ``out`` as JSON
    (paths and other objects as strings) when ``out`` is given; return ``result``."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            json.dump({"figures": result, "machine": describe()}, f, indent=1, default=str)
        print(f"wrote {out}")
    return result
