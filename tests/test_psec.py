"""PSEC: LoRA skills on a diffusion base policy, their library, and their composition."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents import lora
from agents.core import DivergenceError, export_policy, load_policy
from agents.diffusion import NoiseNet
from agents.diffusion_policy import ContextAlpha, DiffusionPolicyConfig, make_diffusion_bc
from agents.replay import Transition
from skills.compose import ComposeConfig, make_composition
from skills.library import SkillLibrary, train_skill

PENDULUM = envs.make("gymnax:Pendulum-v1")  # obs [cos, sin, theta dot], torque in [-2, 2]
TINY = DiffusionPolicyConfig(
    total_steps=300, eval_every=300, eval_episodes=0, batch_size=128, width=32, num_blocks=1,
    time_dim=8, dropout=0.0, lr=3e-3, ema_tau=0.05,
)  # fmt: skip
SKILL = TINY.replace(rank=4)


def dataset(key: jax.Array, action_of, n: int = 2048) -> Transition:
    """Random Pendulum states with ``action_of(obs)`` torques (no dynamics needed)."""
    obs = jax.random.uniform(key, (n, 3), minval=-1.0, maxval=1.0)
    zeros = jnp.zeros((n,))
    return Transition(obs, action_of(obs), zeros, obs, zeros.astype(bool), zeros.astype(bool))


def act(policy, params, obs, key):  # greedy: a Gaussian's mean (diffusion samples either way)
    return policy.act(params, policy.initial_carry(obs.shape[0]), obs, key, True)[1]


def make_library(config: DiffusionPolicyConfig = TINY) -> SkillLibrary:
    """A base cloned from torques near 0 and two skills: +1.5 and -1.5 everywhere."""
    env, params = PENDULUM
    base_data = dataset(jax.random.key(0), lambda o: 0.1 * o[:, :1])
    base = make_diffusion_bc(config, base_data, env, params)
    state, _ = jax.jit(base.train)(jax.random.key(1))
    library = SkillLibrary.create(base.policy.spec, base.policy_params(state)["net"])
    for i, (name, torque) in enumerate((("up", 1.5), ("down", -1.5))):
        data = dataset(jax.random.key(2 + i), lambda o, t=torque: jnp.full((o.shape[0], 1), t))
        meta = {"data": f"torque {torque:+}"}
        skill, key = config.replace(rank=4), jax.random.key(9 + i)
        library, _ = train_skill(library, name, data, skill, env, params, key, metadata=meta)
    return library


#: The tests on the shared library run on one xdist worker, which builds it once.
ONE_LIBRARY = pytest.mark.xdist_group("psec-library")


@pytest.fixture(scope="session")
def library() -> SkillLibrary:
    return make_library()


def test_zero_lora_is_the_base_exactly():
    net = NoiseNet(2, width=16, num_blocks=2, time_dim=8, dropout=0.1)
    x, t, c = jnp.ones((5, 2)), jnp.arange(5), jax.random.normal(jax.random.key(0), (5, 3))
    params = net.init(jax.random.key(1), x, t, c)
    fresh = lora.stack([lora.init_adapter(jax.random.key(2), params, 4)])  # B = 0
    noise = lambda a: 0.05 * jax.random.normal(jax.random.key(3), a.shape)
    trained = jax.tree.map(lambda a: a + noise(a), fresh)  # B != 0

    @jax.jit  # one program for every output
    def outputs():
        with_lora = lambda adapters, w: lora.apply_lora(
            net.apply, params, adapters, w, 16.0, x, t, c
        )
        merged = lora.merge(params, jax.tree.map(lambda a: a[0], trained), 16.0)
        return {
            "base": net.apply(params, x, t, c),
            "fresh": with_lora(fresh, jnp.ones(1)),
            "weight 0": with_lora(trained, jnp.zeros(1)),
            "weight 1": with_lora(trained, jnp.ones(1)),
            "merged": net.apply(merged, x, t, c),
        }

    out = outputs()
    np.testing.assert_array_equal(out["fresh"], out["base"])
    np.testing.assert_array_equal(out["weight 0"], out["base"])
    assert not np.allclose(out["weight 1"], out["base"])
    np.testing.assert_allclose(out["merged"], out["weight 1"], rtol=1e-4, atol=1e-4)


@ONE_LIBRARY
def test_training_a_skill_leaves_the_base_bit_identical(library):
    env, params = PENDULUM
    before = jax.tree.map(np.array, library.base)
    data = dataset(jax.random.key(5), lambda o: jnp.full((o.shape[0], 1), 0.7))
    grown, metrics = train_skill(
        library,
        "mid",
        data,
        SKILL.replace(total_steps=20, eval_every=20),
        env,
        params,
        jax.random.key(6),
    )
    chex.assert_trees_all_equal(before, jax.tree.map(np.array, grown.base))
    assert grown.names == ["up", "down", "mid"] and library.names == ["up", "down"]
    assert np.isfinite(metrics["loss"]).all()
    assert grown.meta["mid"]["rank"] == 4 and grown.meta["mid"]["transitions"] == 2048


@ONE_LIBRARY
def test_skills_learn_their_torques_and_one_hot_composition_is_that_skill(library):
    obs = jax.random.uniform(jax.random.key(7), (256, 3), minval=-1, maxval=1)
    key = jax.random.key(8)
    up = act(*library.policy(["up"]), obs, key)
    down = act(*library.policy(["down"]), obs, key)
    assert float(up.mean()) > 1.0 and float(down.mean()) < -1.0
    for mix in ("param", "noise", "action"):
        both = act(*library.policy(["up", "down"], mix, [1.0, 0.0]), obs, key)
        np.testing.assert_allclose(both, up, atol=1e-5, err_msg=mix)
    # the context-aware policy with an alpha that outputs one-hot (1, 0) everywhere
    alpha = ContextAlpha(2).init(key, obs[:1])
    alpha["params"]["Dense_0"]["bias"] = jnp.array([1.0, 0.0])
    np.testing.assert_allclose(
        act(*library.policy(["up", "down"], "context", alpha=alpha), obs, key), up, atol=1e-5
    )


@ONE_LIBRARY
def test_library_saves_and_loads_to_identical_actions(library, tmp_path):
    library.save(tmp_path / "lib")
    loaded = SkillLibrary.load(tmp_path / "lib")
    assert loaded.names == sorted(library.names) and loaded.meta["up"] == library.meta["up"]
    assert loaded.meta["up"]["data"] == "torque +1.5" and loaded.meta["up"]["rank"] == 4
    obs, key = jax.random.uniform(jax.random.key(0), (16, 3)), jax.random.key(1)
    for names, weights in ((["up"], None), (["up", "down"], [0.3, 0.7])):
        chex.assert_trees_all_equal(
            act(*library.policy(names, "param", weights), obs, key),
            act(*loaded.policy(names, "param", weights), obs, key),
        )
    policy, params = library.policy(["up", "down"], "noise", [0.3, 0.7])
    export_policy(tmp_path / "composed", policy, params, {"skills": ["up", "down"]})
    again, again_params, _ = load_policy(tmp_path / "composed")
    chex.assert_trees_all_equal(act(policy, params, obs, key), act(again, again_params, obs, key))
    library.remove("down").save(tmp_path / "lib")
    assert SkillLibrary.load(tmp_path / "lib").names == ["up"]


@ONE_LIBRARY
def test_context_aware_composition_beats_every_fixed_weight(library):
    """The target: +1.5 where cos(theta) > 0, -1.5 elsewhere. Any fixed mix of "up" and "down"
    gives one torque everywhere; alpha(s) can pick the skill per state."""
    context, fixed = composition_errors(library)
    assert context < 0.5 * fixed, (context, fixed)


@ONE_LIBRARY
def test_best_start_is_the_skill_that_fits_the_demonstrations(library):
    """start="best": every mix starts as the skill whose loss on the demonstrations is lowest
    (here "down": the demonstrations are its torques); the anchor keeps the mean weights there."""
    env, params = PENDULUM
    demos = dataset(jax.random.key(30), lambda o: jnp.full((o.shape[0], 1), -1.5), n=512)
    obs, key = (
        jax.random.uniform(jax.random.key(31), (64, 3), minval=-1, maxval=1),
        jax.random.key(32),
    )
    down = act(*library.policy(["down"]), obs, key)
    config = ComposeConfig(total_steps=50, eval_every=50, eval_episodes=0, batch_size=64)
    for mix in ("context", "param", "noise", "action"):
        best = config.replace(start="best", anchor=1.0)
        agent = make_composition(best, library, ["up", "down"], demos, env, params, mix)
        state = agent.init(jax.random.key(33))
        composed = act(agent.policy, agent.policy_params(state), obs, key)
        np.testing.assert_allclose(composed, down, atol=1e-5, err_msg=mix)
    up_demos = dataset(jax.random.key(35), lambda o: jnp.full((o.shape[0], 1), 1.5), n=512)
    fast = config.replace(total_steps=100, eval_every=100, lr=0.03)
    weights = lambda anchor: (
        jax.jit(
            make_composition(
                fast.replace(anchor=anchor), library, ["up", "down"], up_demos, env, params, "param"
            ).train
        )(jax.random.key(34))[0].params
    )
    free, held = weights(0.0), weights(1.0)  # from the uniform start (0.5, 0.5)
    assert free[0] > 0.8 and abs(held[0] - 0.5) < 0.05, (free, held)
    with pytest.raises(ValueError, match="start='worst' must be one of"):
        make_composition(config.replace(start="worst"), library, ["up"], demos, env, params)


@pytest.mark.slow  # 75 s; the PSEC study smoke test runs the Gaussian model end to end
def test_gaussian_base_skills_and_composition():
    """PSEC's MLP ablation: the same library, skills and composition on a Gaussian model."""
    library = make_library(TINY.replace(model="gaussian"))
    assert library.spec["model"] == "gaussian"
    obs = jax.random.uniform(jax.random.key(7), (256, 3), minval=-1, maxval=1)
    up = act(*library.policy(["up"]), obs, jax.random.key(8))
    down = act(*library.policy(["down"]), obs, jax.random.key(8))
    assert float(up.mean()) > 1.0 and float(down.mean()) < -1.0
    for mix in ("param", "noise", "action"):
        both = act(*library.policy(["up", "down"], mix, [1.0, 0.0]), obs, jax.random.key(8))
        np.testing.assert_allclose(both, up, atol=1e-5, err_msg=mix)
    context, fixed = composition_errors(library)
    assert context < 0.5 * fixed, (context, fixed)
    with pytest.raises(ValueError, match=r"pass config.replace\(model='gaussian'"):
        train_skill(library, "x", dataset(jax.random.key(0), lambda o: o[:, :1]), SKILL,
                    *PENDULUM, jax.random.key(0))  # fmt: skip


def composition_errors(library: SkillLibrary) -> tuple[float, float]:
    """Squared error to the state-dependent target of context-aware PSEC, and of the best
    fixed parameter-space weight."""
    env, params = PENDULUM
    target = lambda o: jnp.where(o[:, :1] > 0, 1.5, -1.5)
    demos = dataset(jax.random.key(20), target, n=512)
    config = ComposeConfig(total_steps=400, eval_every=400, eval_episodes=0, batch_size=256)
    agent = make_composition(config, library, ["up", "down"], demos, env, params, "context")
    state, _ = jax.jit(agent.train)(jax.random.key(21))
    obs = jax.random.uniform(jax.random.key(22), (512, 3), minval=-1, maxval=1)
    error = lambda policy, p: float(
        jnp.mean(jnp.square(act(policy, p, obs, jax.random.key(23)) - target(obs)))
    )
    context = error(agent.policy, agent.policy_params(state))
    fixed = min(
        error(*library.policy(["up", "down"], "param", [w, 1 - w])) for w in np.linspace(0, 1, 11)
    )
    return context, fixed


@ONE_LIBRARY
def test_bad_input_is_named(library, tmp_path):
    env, params = PENDULUM
    data = dataset(jax.random.key(0), lambda o: o[:, :1])
    with pytest.raises(ValueError, match=r"skill 'wide'.*rank"):
        train_skill(library, "wide", data, SKILL.replace(rank=64), env, params, jax.random.key(0))
    with pytest.raises(ValueError, match="rank"):
        SKILL.replace(rank=-1).validate()
    with pytest.raises(DivergenceError, match="skill 'wild' diverged: loss"):
        train_skill(library, "wild", data, SKILL.replace(lr=1e9), env, params, jax.random.key(0))
    empty = jax.tree.map(lambda x: x[:0], data)
    with pytest.raises(ValueError, match="skill 'empty'"):
        train_skill(library, "empty", empty, SKILL, env, params, jax.random.key(0))
    other = NoiseNet(1, width=16, num_blocks=1, time_dim=8).init(
        jax.random.key(0), jnp.zeros((1, 1)), jnp.zeros((1,)), jnp.zeros((1, 3))
    )
    with pytest.raises(ValueError, match=r"skill 'alien'( does not fit|: layer)"):
        library.add("alien", lora.init_adapter(jax.random.key(0), other, 2), {})
    with pytest.raises(ValueError, match="weights have shape"):
        library.policy(["up", "down"], "param", [1.0, 0.0, 0.0])
    alpha3 = ContextAlpha(3).init(jax.random.key(0), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="alpha outputs 3 weights but 2 skills"):
        library.policy(["up", "down"], "context", alpha=alpha3)
    library.save(tmp_path / "lib")
    retrained = SkillLibrary.create(library.spec, jax.tree.map(lambda x: x + 1.0, library.base))
    with pytest.raises(ValueError, match=r"skill 'up'.*another base"):
        retrained.load_skill(tmp_path / "lib" / "skills" / "up")
    with pytest.raises(ValueError, match="no skill 'sideways'"):
        library.policy(["sideways"])


@pytest.mark.slow  # about a minute; beyond the default suite's budget
def test_iql_advantage_weights_and_critic_picked_actions_prefer_high_reward():
    """Random torques rewarded by -(a - 1)^2 in one-step episodes: IQL's advantage weights rise
    with the reward, and a diffusion BC policy that picks the best of 16 candidates by the IQL
    critic acts closer to 1 than the same policy drawing one action."""
    from agents.iql import IQLConfig, advantage_weights, make_iql

    env, params = PENDULUM
    k_obs, k_act = jax.random.split(jax.random.key(30))
    data = dataset(k_obs, lambda o: jax.random.uniform(k_act, (o.shape[0], 1), minval=-2, maxval=2))
    reward = -jnp.square(data.action[:, 0] - 1.0)
    data = data._replace(reward=reward, terminated=jnp.ones_like(data.terminated))
    iql_config = IQLConfig(
        total_steps=600, eval_every=600, eval_episodes=0, batch_size=256, hidden=(32, 32),
        normalize_reward=False,
    )  # fmt: skip
    iql = make_iql(iql_config, data, env, params)
    state, _ = jax.jit(iql.train)(jax.random.key(31))
    weights = advantage_weights(iql_config, state, data, env, params)
    assert weights.shape == (2048,) and bool(jnp.all((weights >= 0) & (weights <= 100)))
    rank = lambda x: np.argsort(np.argsort(np.asarray(x)))
    assert np.corrcoef(rank(weights), rank(reward))[0, 1] > 0.8  # Spearman
    bc = lambda n: make_diffusion_bc(
        TINY, data, env, params, critic=state.target_critic, critic_hidden=(32, 32),
        num_candidates=n,
    )  # fmt: skip
    agent = bc(1)
    policy_params = agent.policy_params(jax.jit(agent.train)(jax.random.key(32))[0])
    obs = data.obs[:256]
    one = act(agent.policy, policy_params, obs, jax.random.key(33))
    best = act(bc(16).policy, policy_params, obs, jax.random.key(33))
    distance = lambda a: float(jnp.mean(jnp.abs(a - 1.0)))
    assert distance(best) < 0.6 * distance(one), (distance(best), distance(one))
