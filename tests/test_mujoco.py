"""MuJoCo tasks: parity with Gymnasium v5 on both backends, task params, truncation, errors."""

from __future__ import annotations

import functools

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.mujoco import TASKS, MujocoEnv, Physics

NUM_STEPS = 100
# MJX (float32) against Gymnasium (float64). One step from Gymnasium's own state ("forced"):
# observations and rewards within MJX_STEP_ATOL. Running freely, the two trajectories drift
# apart chaotically (identically with MuJoCo's default solver settings, so this is float32, not
# the 4 solver iterations): observations within MJX_FREE_ATOL for the first MJX_FREE_STEPS
# steps; termination flags identical over all 100 steps.
MJX_STEP_ATOL = 2e-3
MJX_FREE_ATOL, MJX_FREE_STEPS = 2e-2, 30


@functools.cache
def _env(name: str, backend: str) -> MujocoEnv:
    return envs.make(name, backend=backend)[0]


def _rollout(
    env: MujocoEnv,
    params,
    key: jax.Array,
    actions: jax.Array,  # [T, act_dim]
    forced: Physics | None = None,  # [T]: if given, the state before each step
) -> dict:
    """Step through ``actions``; per step: the pre-reset observation, reward, flags, and the
    (post-reset) positions and velocities. Forced or not, it is one compiled program."""
    force = forced is not None
    if forced is None:
        forced = jax.tree.map(
            lambda x: jnp.zeros((len(actions), *x.shape), x.dtype),
            jax.eval_shape(env.reset, key, env.default_params)[1].physics,
        )
    return _rollout_jit(env, params, key, actions, forced, force)


@functools.partial(jax.jit, static_argnums=0)
def _rollout_jit(env, params, key, actions, forced, force) -> dict:
    def body(state, inputs):
        key, action, forced_physics = inputs
        physics = jax.tree.map(lambda f, s: jnp.where(force, f, s), forced_physics, state.physics)
        state = state.replace(physics=physics)
        _, state, reward, terminated, truncated, info = env.step(key, state, action, params)
        out = dict(
            obs=info["final_observation"],
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            qpos=state.physics.qpos,
            qvel=state.physics.qvel,
        )
        return state, out

    reset_key, key = jax.random.split(key)
    _, state = env.reset(reset_key, params)
    keys = jax.random.split(key, actions.shape[0])
    _, out = jax.lax.scan(body, state, (keys, actions, forced))
    out["qpos0"], out["qvel0"] = state.physics.qpos, state.physics.qvel
    return out


def _gymnasium_replay(name: str, ours: dict, actions: np.ndarray) -> dict:
    """Gymnasium's ``<name>-v5`` from our initial state with the same actions; after each
    termination it restarts from our post-reset state, so every step is comparable. Also
    returns Gymnasium's physics before every step (``forced``)."""
    env = gymnasium.make(f"{name}-v5").unwrapped
    env.reset(seed=0)
    env.set_state(np.float64(ours["qpos0"]), np.float64(ours["qvel0"]))
    out = {"obs": [], "reward": [], "terminated": [], "state": []}
    for t, action in enumerate(actions):
        d = env.data
        out["state"].append(np.concatenate([d.qpos, d.qvel, d.qacc_warmstart]))
        obs, reward, terminated, _, _ = env.step(action)
        for k, v in zip(("obs", "reward", "terminated"), (obs, reward, terminated), strict=True):
            out[k].append(v)
        if terminated:
            env.reset(seed=t)
            env.set_state(np.float64(ours["qpos"][t]), np.float64(ours["qvel"][t]))
    nq, nv = env.model.nq, env.model.nv
    env.close()
    out = {k: np.asarray(v) for k, v in out.items()}
    state = out.pop("state")  # float64 [T, nq + 2 nv]
    value = state.astype(np.float32)
    out["forced"] = Physics(
        value[:, :nq], value[:, nq : nq + nv], value[:, nq + nv :], np.float32(state - value)
    )
    return out


def _actions(name: str, seed: int) -> np.ndarray:
    act_dim = TASKS[name].act_dim
    return np.random.default_rng(seed).uniform(-1, 1, (NUM_STEPS, act_dim)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("HalfCheetah", "native"),
        ("Hopper", "native"),
        ("Walker2d", "native"),
        ("HalfCheetah", "mjx"),
        pytest.param("Hopper", "mjx", marks=pytest.mark.slow),  # compiles for 20-60 s
        pytest.param("Walker2d", "mjx", marks=pytest.mark.slow),  # compiles for 50-200 s
    ],
)
def test_parity_with_gymnasium(name: str, backend: str) -> None:
    """From the same state, the same 100 actions: observations, rewards and terminations."""
    env, params, key = _env(name, backend), _env(name, backend).default_params, jax.random.key(1)
    actions = _actions(name, seed=1)
    ours = jax.device_get(_rollout(env, params, key, actions))
    ref = _gymnasium_replay(name, ours, actions)
    forced = jax.device_get(_rollout(env, params, key, actions, ref["forced"]))
    free_err = np.abs(ours["obs"] - ref["obs"]).max(-1)  # [T]
    step_err = np.abs(forced["obs"] - ref["obs"]).max()
    reward_err = np.abs(forced["reward"] - ref["reward"]).max()
    print(
        f"{name} {backend}: free-running max |obs| error {free_err.max():.2e} "
        f"({free_err[:MJX_FREE_STEPS].max():.2e} in the first {MJX_FREE_STEPS} steps); one step: "
        f"|obs| {step_err:.2e}, |reward| {reward_err:.2e}; {ref['terminated'].sum()} falls"
    )
    np.testing.assert_array_equal(ours["terminated"], ref["terminated"])
    np.testing.assert_array_equal(forced["terminated"], ref["terminated"])
    if name != "HalfCheetah":  # the replay must cover at least one fall
        assert ref["terminated"].sum() >= 1
    if backend == "native":  # float64 both sides: only our float32 outputs round
        np.testing.assert_allclose(ours["obs"], ref["obs"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ours["reward"], ref["reward"], rtol=1e-5, atol=1e-5)
    assert step_err < MJX_STEP_ATOL and reward_err < MJX_STEP_ATOL, (step_err, reward_err)
    assert free_err[:MJX_FREE_STEPS].max() < MJX_FREE_ATOL, free_err[:MJX_FREE_STEPS]


def _gymnasium_shifted(name: str, friction: float, gravity: float, mass: float):
    """Gymnasium's env with its model's friction, gravity and masses scaled by hand."""
    env = gymnasium.make(f"{name}-v5").unwrapped
    model = env.model
    model.geom_friction[:] *= friction
    model.opt.gravity[:] *= gravity
    model.body_mass[:] *= mass
    model.body_inertia[:] *= mass
    return env


@pytest.mark.parametrize("backend", ["native", pytest.param("mjx", marks=pytest.mark.slow)])
def test_vmapped_task_params(backend: str) -> None:
    """One vmapped batch of params: reward variations leave the physics alone and change the
    reward as documented; each dynamics shift matches Gymnasium with the model scaled by hand."""
    name = "HalfCheetah"
    env = _env(name, backend)
    # MJX: float32 drift grows faster with shifted dynamics (4e-2 by step 27 at friction 0.3)
    atol, checked = (1e-6, MJX_FREE_STEPS) if backend == "native" else (MJX_FREE_ATOL, 20)
    base = env.default_params
    variants = [
        base,
        base.replace(direction=-1.0),
        base.replace(target_velocity=2.0),
        base.replace(jump_weight=3.0),
        base.replace(friction_scale=0.3),
        base.replace(gravity_scale=0.5),
        base.replace(mass_scale=2.0),
        base.replace(friction_scale=2.0, gravity_scale=1.5, mass_scale=0.5),
    ]
    params = jax.tree.map(lambda *v: jnp.stack([jnp.asarray(x) for x in v]), *variants)
    actions = _actions(name, seed=2)[:MJX_FREE_STEPS]
    rollout = jax.vmap(_rollout, in_axes=(None, 0, None, None))
    out = jax.device_get(rollout(env, params, jax.random.key(2), actions))
    default = jax.tree.map(lambda x: x[0], out)
    x_velocity = np.diff(np.concatenate([out["qpos0"][:1, :1], default["qpos"][:, :1]]), axis=0)
    x_velocity = x_velocity[:, 0] / TASKS[name].dt
    ctrl = 0.1 * np.square(actions).sum(-1)
    height = default["qpos"][:, 1] - TASKS[name].model.qpos0[1]
    for i in range(1, 4):  # reward variations: same physics, rewards as documented
        np.testing.assert_array_equal(out["qpos"][i], default["qpos"])
    np.testing.assert_allclose(default["reward"], x_velocity - ctrl, atol=1e-4)
    np.testing.assert_allclose(out["reward"][1], -x_velocity - ctrl, atol=1e-4)
    np.testing.assert_allclose(out["reward"][2], -np.abs(x_velocity - 2.0) - ctrl, atol=1e-4)
    np.testing.assert_allclose(out["reward"][3], x_velocity - ctrl + 3.0 * height, atol=1e-4)
    for i, p in enumerate(variants[4:], start=4):  # dynamics shifts, each against Gymnasium
        # our scales are float32 leaves: hand Gymnasium the same (0.3 is not 0.3 in float32)
        shift = [float(np.float32(v)) for v in (p.friction_scale, p.gravity_scale, p.mass_scale)]
        gym_env = _gymnasium_shifted(name, *shift)
        gym_env.reset(seed=0)
        gym_env.set_state(np.float64(out["qpos0"][i]), np.float64(out["qvel0"][i]))
        ref = np.stack([gym_env.step(a)[0] for a in actions])
        np.testing.assert_allclose(out["obs"][i, :checked], ref[:checked], rtol=atol, atol=atol)
        assert np.abs(out["obs"][i] - default["obs"]).max() > 1e-2, f"{shift} changed nothing"


def test_velocity_cost_counts_fast_steps_and_leaves_the_reward() -> None:
    """Safe RL's velocity constraint: cost 1 on each step with |x_velocity| above the limit,
    the same physics and reward; ``evaluate`` sums it per episode."""
    from agents.core import Policy, no_carry
    from agents.evaluation import evaluate

    env, free = envs.make("HalfCheetah", backend="native", max_steps_in_episode=40)
    limited = free.replace(velocity_limit=0.5)
    actions = jnp.asarray(_actions("HalfCheetah", seed=3)[:40])

    @jax.jit
    def run(params):  # -> reward, x_velocity, cost [40]
        def body(state, action):
            _, state, reward, _, _, info = env.step(jax.random.key(1), state, action, params)
            return state, (reward, info["x_velocity"], info["cost"])

        return jax.lax.scan(body, env.reset(jax.random.key(0), params)[1], actions)[1]

    reward, velocity, cost = jax.device_get(run(limited))
    free_reward, _, free_cost = jax.device_get(run(free))
    np.testing.assert_array_equal(reward, free_reward)
    np.testing.assert_array_equal(cost, np.abs(velocity) > 0.5)
    assert 0 < cost.sum() < 40 and not free_cost.any()
    push = lambda p, c, obs, key, d=False: (c, jnp.broadcast_to(p, (obs.shape[0], 6)))
    policy = Policy(push, no_carry, {})
    every_step = evaluate(jax.random.key(0), env, free.replace(velocity_limit=0.0), policy,
                          jnp.full(6, 0.8), 2)  # fmt: skip
    np.testing.assert_array_equal(every_step["cost"], every_step["length"])
    assert not evaluate(jax.random.key(0), env, free, policy, jnp.full(6, 0.8), 2)["cost"].any()


def test_truncation_at_1000_steps() -> None:
    """Truncated exactly at step 1000 (never terminated), with the pre-reset observation in
    info: the same run with a longer limit passes through that observation unchanged."""
    env = _env("HalfCheetah", "native")
    actions = np.resize(_actions("HalfCheetah", seed=3), (1001, 6))
    key = jax.random.key(3)
    out = jax.device_get(_rollout(env, env.default_params, key, actions))
    longer = jax.device_get(
        _rollout(env, env.default_params.replace(max_steps_in_episode=2000), key, actions)
    )
    assert np.flatnonzero(out["truncated"]).tolist() == [999]
    assert not out["terminated"].any() and not longer["truncated"].any()
    np.testing.assert_array_equal(out["obs"][:1000], longer["obs"][:1000])
    # after the reset the root is back near x = 0 (reset noise 0.1), far from x(999)
    assert abs(out["qpos"][999, 0]) <= 0.1 < abs(longer["qpos"][999, 0])


def test_spaces_and_default_backend() -> None:
    for name, (obs_dim, act_dim) in {
        "HalfCheetah": (17, 6),
        "Hopper": (11, 3),
        "Walker2d": (17, 6),
    }.items():
        env, params = envs.make(name)
        assert env.backend.name == ("native" if jax.default_backend() == "cpu" else "mjx")
        assert env.observation_space(params).shape == (obs_dim,)
        space = env.action_space(params)
        assert space.shape == (act_dim,)
        np.testing.assert_array_equal(space.low, -1.0)
        np.testing.assert_array_equal(space.high, 1.0)
        obs, _ = env.reset(jax.random.key(0), params)
        assert obs.shape == (obs_dim,) and obs.dtype == jnp.float32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"direction": 0.5}, "direction must be \\+1 or -1"),
        ({"friction_scale": -1.0}, "friction_scale must be finite and > 0"),
        ({"mass_scale": float("nan")}, "mass_scale must be finite"),
        ({"gravity_scale": float("inf")}, "gravity_scale must be finite"),
        ({"target_velocity": None}, "float\\('inf'\\)"),
        ({"target_velocity": float("nan")}, "target_velocity must not be NaN"),
        ({"max_steps_in_episode": 0}, "max_steps_in_episode must be >= 1"),
        ({"velocity_limit": -1.0}, "velocity_limit must be >= 0"),
    ],
)
def test_bad_params_raise(override: dict, message: str) -> None:
    """At ``envs.make`` (while concrete: training sees them traced) and at ``reset``."""
    with pytest.raises(ValueError, match=message):
        envs.make("Hopper", **override)
    env, params = envs.make("Hopper")
    with pytest.raises(ValueError, match=message):
        env.reset(jax.random.key(0), params.replace(**override))


def test_a_string_for_a_number_is_named() -> None:
    with pytest.raises(ValueError, match="gravity_scale='2' must be a number"):
        envs.make("Hopper", gravity_scale="2")


def test_bad_inputs_raise() -> None:
    env, params = envs.make("Hopper")
    _, state = env.reset(jax.random.key(0), params)
    with pytest.raises(ValueError, match=r"expected an action of shape \(3,\), got \(6,\)"):
        env.step(jax.random.key(1), state, jnp.zeros(6), params)
    with pytest.raises(ValueError, match="expected an action of shape"):
        env.step(jax.random.key(1), state, jnp.zeros((4, 3)), params)  # batch: use vmap
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        envs.make("Hopper", backend="gpu")
    with pytest.raises(ValueError, match="backend= applies to the MuJoCo tasks"):
        envs.make("GoalSequence", backend="mjx")
    with pytest.raises(ValueError, match="unknown parameter"):
        envs.make("Hopper", target_speed=1.0)


def test_state_from_observation_steps_like_the_original_state() -> None:
    """A state rebuilt from an observation (root x at 0, cold solver) steps to the same reward,
    flags and next observation as the state that produced it (x never enters them). Hopper:
    a task that terminates; HalfCheetah's is checked by tests/test_synthetic.py."""
    env = _env("Hopper", "native")
    params = env.default_params
    k_reset, k_act = jax.random.split(jax.random.key(0))
    _, state = env.reset(k_reset, params)
    action = jax.random.uniform(k_act, (env.task.act_dim,), minval=-1.0, maxval=1.0)
    for _ in range(5):  # away from the reset pose, the solver warm
        obs, state, *_ = env.step(k_act, state, action, params)
    step = jax.jit(lambda s: env.step_env(k_act, s, action, params))
    original = step(state)
    rebuilt_state = env.state_from_observation(obs)
    assert float(rebuilt_state.physics.qpos[0]) == 0.0 and int(rebuilt_state.time) == 0
    rebuilt = step(rebuilt_state)
    np.testing.assert_allclose(rebuilt[0], original[0], atol=1e-4)  # next observation
    np.testing.assert_allclose(rebuilt[2], original[2], atol=1e-4)  # reward
    assert bool(rebuilt[3]) == bool(original[3])  # terminated
    with pytest.raises(ValueError, match="an observation has shape"):
        env.state_from_observation(obs[:-1])


def test_out_of_range_actions_are_clipped_and_counted_or_refused() -> None:
    """A continuous action outside the box steps as the clipped action and is counted; a NaN
    one is refused when concrete; a discrete one out of range is refused when concrete and
    under checkify when traced."""
    from jax.experimental import checkify

    env, params = envs.make("HalfCheetah")
    _, state = env.reset(jax.random.key(0), params)
    wild = jnp.array([100.0, -3.0, 0.5, 0.0, 2.0, -0.1])
    *clipped, info = env.step(jax.random.key(1), state, wild, params)
    *inside, _ = env.step(jax.random.key(1), state, jnp.clip(wild, -1.0, 1.0), params)
    for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(inside)):
        np.testing.assert_array_equal(a, b)
    assert int(info["clipped_actions"]) == 3
    with pytest.raises(ValueError, match="is not finite"):
        env.step(jax.random.key(1), state, wild.at[0].set(jnp.nan), params)
    traced = jax.jit(env.step)(jax.random.key(1), state, wild.at[0].set(jnp.nan), params)
    assert int(traced[-1]["clipped_actions"]) == 3  # NaN -> 0: clipped, counted

    grid, grid_params = envs.make("GoalSequence")
    _, g_state = grid.reset(jax.random.key(0), grid_params)
    with pytest.raises(ValueError, match=r"discrete action 7 is outside \[0, "):
        grid.step(jax.random.key(1), g_state, jnp.int32(7), grid_params)
    checked = checkify.checkify(jax.jit(grid.step))
    err, _ = checked(jax.random.key(1), g_state, jnp.int32(-1), grid_params)
    assert "discrete action -1 is outside" in str(err.get())


def test_reset_to_a_gymnasium_state_keeps_float64_and_steps_like_gymnasium() -> None:
    """A state taken from a Gymnasium rollout: ``reset_to`` keeps its float64 values on the
    native backend, ``observation`` is Gymnasium's, and the next steps match Gymnasium's."""
    gym_env = gymnasium.make("HalfCheetah-v5").unwrapped
    gym_env.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(20):  # somewhere along a rollout
        gym_env.step(rng.uniform(-1, 1, 6))
    qpos, qvel = gym_env.data.qpos.copy(), gym_env.data.qvel.copy()
    env, params = envs.make("HalfCheetah", backend="native")
    obs, state = env.reset_to(qpos, qvel, params)
    back = state.physics.float64()
    np.testing.assert_allclose(back[0], qpos, rtol=1e-13, atol=1e-15)  # float32 would be 1e-7
    np.testing.assert_allclose(back[1], qvel, rtol=1e-13, atol=1e-15)
    assert np.abs(back[0] - qpos).max() < np.abs(qpos.astype(np.float32) - qpos).max() / 1e4
    np.testing.assert_array_equal(obs, gym_env._get_obs().astype(np.float32))
    np.testing.assert_array_equal(env.observation(state, params), obs)
    gym_env.data.qacc_warmstart[:] = 0  # both start the solver cold
    step = jax.jit(env.step)
    for t in range(5):
        action = rng.uniform(-1, 1, 6).astype(np.float32)
        ref_obs, ref_reward, *_ = gym_env.step(action)
        obs, state, reward, *_ = step(jax.random.key(t), state, action, params)
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(reward, ref_reward, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"qpos has shape \(9,\), got \(8,\)"):
        env.reset_to(qpos[:8], qvel, params)
    with pytest.raises(ValueError, match="qvel holds NaN"):
        env.reset_to(qpos, qvel * np.nan, params)
