"""XLA settings this codebase needs on CPU, applied before JAX starts its backend.

XLA's multi-threaded Eigen pool can wedge forever on vmapped training programs on small CPU
machines (every worker parked, the host waiting in ``block_until_ready``); single-threaded
Eigen avoids it at a cost of roughly 15% on the heaviest programs. The concurrency-optimised
scheduler has a similar hang with batched Cholesky (MJX). Both flags only touch the CPU
backend. Set ``SKILL_AGENTS_KEEP_XLA_FLAGS=1`` to leave ``XLA_FLAGS`` untouched.
"""

from __future__ import annotations

import os

CPU_FLAGS = (
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)


def configure() -> None:
    """Add the missing ``CPU_FLAGS`` to ``XLA_FLAGS``; effective before JAX's first op."""
    if os.environ.get("SKILL_AGENTS_KEEP_XLA_FLAGS"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in CPU_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags
