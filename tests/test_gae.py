"""GAE against a plain-Python reference, including truncation bootstrapping."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.gae import gae


def reference_gae(r, v, nv, term, trunc, gamma, lam):
    adv = np.zeros_like(r)
    acc = 0.0
    for t in reversed(range(len(r))):
        delta = r[t] + gamma * (0.0 if term[t] else nv[t]) - v[t]
        acc = delta + gamma * lam * (0.0 if (term[t] or trunc[t]) else acc)
        adv[t] = acc
    return adv, adv + v


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.floats(0.5, 1.0),
    st.floats(0.0, 1.0),
)
def test_gae_matches_reference(seed, gamma, lam):
    rng = np.random.default_rng(seed)
    t = 17
    r, v, nv = (rng.normal(size=t).astype(np.float32) for _ in range(3))
    term = rng.random(t) < 0.15
    trunc = (rng.random(t) < 0.15) & ~term
    adv, tgt = gae(*(jnp.asarray(x) for x in (r, v, nv, term, trunc)), gamma, lam)
    ref_adv, ref_tgt = reference_gae(r, v, nv, term, trunc, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tgt, ref_tgt, rtol=1e-4, atol=1e-4)


def test_truncation_bootstraps_but_termination_does_not():
    ones = jnp.ones(1)
    no = jnp.zeros(1, bool)
    adv_trunc, _ = gae(ones, 0 * ones, 10 * ones, no, ~no, 0.9, 0.95)
    adv_term, _ = gae(ones, 0 * ones, 10 * ones, ~no, no, 0.9, 0.95)
    np.testing.assert_allclose(adv_trunc, [1 + 0.9 * 10])
    np.testing.assert_allclose(adv_term, [1.0])
