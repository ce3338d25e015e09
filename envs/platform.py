"""XLA settings this codebase needs on CPU, applied before JAX starts its backend.

XLA's multi-threaded Eigen pool can wedge forever on vmapped training programs on small CPU
machines (every worker parked, the host waiting in ``block_until_ready``); single-threaded
Eigen avoids it at a cost of roughly 15% on the heaviest programs. The concurrency-optimised
scheduler has a similar hang with batched Cholesky (MJX). Both flags only touch the CPU
backend. Set ``SKILL_AGENTS_KEEP_XLA_FLAGS=1`` to leave ``XLA_FLAGS`` untouched.

``describe()`` names the machine a result came from: XLA compiles for the host's instruction
set, so the same seed gives the same numbers on one CPU type, not across them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# x86 extensions XLA's CPU code generation can use (``--xla_cpu_max_isa`` caps them)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")

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


def describe() -> dict[str, Any]:
    """What a run's numbers depend on beyond its config and seed: the JAX build, the devices, the
    CPU (model and the ``ISA_FLAGS`` it has; Linux) and ``XLA_FLAGS``."""
    import jax  # configure() has run by now: importing JAX does not start its backend

    cpu = {"machine": platform.machine(), "model": platform.processor(), "isa": []}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else ():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name":  # every core's is the same
            cpu["model"] = value
        elif key == "flags":
            cpu["isa"] = [f for f in ISA_FLAGS if f in value.split()]
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": sorted({d.device_kind for d in jax.devices()}),
        "device_count": jax.device_count(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
