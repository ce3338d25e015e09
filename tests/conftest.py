"""Fixtures shared by the test modules, and the XLA settings the suite compiles with."""

import contextlib
import os

# Tests are compile-bound (small programs, short runs): XLA's CPU backend at optimisation level 1
# with its older (non-MLIR) fusion emitters and runtime compiles about three times faster than its
# defaults, and the whole suite runs about a third faster. Set before JAX starts its backend; an
# XLA_FLAGS of one's own wins. Users' runs keep XLA's defaults.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false "
    "--xla_cpu_use_thunk_runtime=false",
)

import jax
import pytest


@pytest.fixture
def no_compiles():
    """A context manager that fails the test if XLA compiles anything inside its block."""

    @contextlib.contextmanager
    def guard():
        compiles = []
        listener = lambda name, *_, **__: (
            compiles.append(name) if "backend_compile" in name else None
        )
        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)
        assert not compiles, f"{len(compiles)} compilation(s) before the error"

    return guard


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory):
    """A Minari root with tiny HalfCheetah datasets (50-step episodes of random actions) named as
    ``experiments.make_datasets`` names them, for the offline studies' smoke tests."""
    import envs
    from agents.replay.datasets import collect, save_dataset

    root = tmp_path_factory.mktemp("datasets")
    env_kwargs = {"backend": "native", "max_steps_in_episode": 50}
    env, params = envs.make("HalfCheetah", **env_kwargs)
    low, high = env.action_space(params).low, env.action_space(params).high
    act = lambda obs, key: jax.random.uniform(key, (obs.shape[0], 6), minval=low, maxval=high)
    rollout = jax.jit(lambda k: collect(k, env, params, act, 100, 4))
    for i, level in enumerate(("medium", "medium-replay", "medium-expert")):
        data = rollout(jax.random.key(i))
        save_dataset(
            data,
            f"skill-agents/halfcheetah-{level}-v0",
            env_name="HalfCheetah",
            env_kwargs=env_kwargs,
            ref_min_score=-20.0,
            ref_max_score=200.0,
            root=root,
        )
    return root


def pytest_collection_modifyitems(items):
    """The studies' end-to-end runs (the longest tests) first, so the two xdist workers are
    not left with one long test each at the end."""
    items.sort(key=lambda item: "test_studies.py" not in item.nodeid)
