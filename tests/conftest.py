"""Fixtures shared by the test modules."""

import contextlib

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
