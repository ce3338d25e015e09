"""Cultural accumulation: social channel, oracles, visibility, generations, resume, learning."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.cultural import (
    VISIBILITY,
    InContextConfig,
    InWeightsConfig,
    make_in_context_generation,
    make_in_weights_generation,
    record_play,
    run_generations,
    select_demonstrations,
)
from agents.ppo import PPOConfig
from envs.gridworlds.social import SocialMemorySequence, visibility_probability

ENV = SocialMemorySequence()
IN_CONTEXT = SocialMemorySequence.in_context_params(num_symbols=3, seq_len=6, num_trials=4)


class Copier(NamedTuple):
    """A scripted ``Policy``: plays the shown symbol when one is shown, else a random one."""

    num_symbols: int
    memory_size: int = 1

    def initial_carry(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, 1))

    def act(self, params, carry, obs, resets, key, deterministic=False):
        n = self.num_symbols
        shown = jnp.argmax(obs[:, -(n + 2) : -1], axis=-1)  # [B]; n means nothing shown
        guess = jax.random.randint(key, shown.shape, 0, n)
        return carry, jnp.where(shown < n, shown, guess)


def _rollout(params, key, steps):
    """Expert play; (states before each step, obs before each step)."""

    def body(carry, key):
        obs, state = carry
        action = ENV.expert_action(state, params)
        obs2, state2, *_ = ENV.step(key, state, action, params)
        return (obs2, state2), (state, obs)

    k0, k1 = jax.random.split(key)
    return jax.lax.scan(body, ENV.reset(k0, params), jax.random.split(k1, steps))[1]


def test_visibility_schedule_first_trial_seen_last_unseen() -> None:
    p = [float(visibility_probability(jnp.int32(t), IN_CONTEXT)) for t in range(4)]
    np.testing.assert_allclose(p, [1.0, 2 / 3, 1 / 3, 0.0], atol=1e-6)
    fixed = SocialMemorySequence.in_weights_params(0, 3, 6, visibility=0.3)
    assert float(visibility_probability(jnp.int32(0), fixed)) == pytest.approx(0.3)
    steps = 4 * 6  # the expert finishes each trial in seq_len steps
    states, _ = jax.jit(jax.vmap(lambda k: _rollout(IN_CONTEXT, k, steps)))(
        jax.random.split(jax.random.key(0), 256)
    )
    trial, visible = np.asarray(states.env_state.trial), np.asarray(states.visible)
    assert visible[trial == 0].all() and not visible[trial == 3].any()
    for t, p_t in enumerate(p[1:3], 1):  # per-trial draws, constant within a trial
        per_episode = visible[:, t * 6 : (t + 1) * 6]
        assert (per_episode == per_episode[:, :1]).all()
        assert abs(per_episode[:, 0].mean() - p_t) < 0.1


@pytest.mark.parametrize("accuracy", [0.0, 0.5, 1.0])
def test_oracle_accuracy(accuracy: float) -> None:
    params = IN_CONTEXT.replace(oracle_accuracy=jnp.float32(accuracy), seq_len=24)
    _, states = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))(
        jax.random.split(jax.random.key(1), 2048), params
    )
    agree = float((states.demo == states.env_state.sequence).mean())
    expected = accuracy + (1 - accuracy) / params.num_symbols  # noise may hit the right symbol
    assert agree == pytest.approx(expected, abs=0.02)
    # the reference's default: accuracy 1 - 1 / (1 + U * seq_len), mean about 0.87 for 24
    _, states = jax.vmap(ENV.reset, in_axes=(0, None))(
        jax.random.split(jax.random.key(2), 4096), params.replace(oracle_accuracy=None)
    )
    u = np.random.default_rng(0).uniform(size=200_000)
    acc = 1 - 1 / (1 + u * 24)
    expected = float(np.mean(acc + (1 - acc) / 3))
    assert float((states.demo == states.env_state.sequence).mean()) == pytest.approx(
        expected, abs=0.02
    )


def test_observation_contents() -> None:
    demos = jnp.array([[2, 1, 0, 2, 1, 0]], jnp.int32)
    params = IN_CONTEXT.replace(demos=demos)
    states, obs = jax.jit(lambda k: _rollout(params, k, 24))(jax.random.key(3))
    n, base = params.num_symbols, ENV.task.get_obs
    for t in range(24):
        state = jax.tree.map(lambda x, t=t: x[t], states)
        o = np.asarray(obs[t])
        assert o.shape == (params.obs_dim,) == (ENV.task.default_params.obs_dim + n + 2,)
        np.testing.assert_array_equal(o[: -(n + 2)], base(state.env_state, params))
        shown = int(demos[0, int(state.env_state.position)]) if bool(state.visible) else n
        np.testing.assert_array_equal(o[-(n + 2) : -1], np.eye(n + 1)[shown])
        assert o[-1] == float(state.visible)
    with pytest.raises(ValueError, match="demos must have shape"):
        IN_CONTEXT.replace(demos=jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="visibility must be in"):
        IN_CONTEXT.replace(visibility=1.5)
    with pytest.raises(ValueError, match="demo symbols"):
        IN_CONTEXT.replace(demos=jnp.full((1, 6), 7, jnp.int32))


def test_in_context_generation_sees_the_previous_generation() -> None:
    copier = Copier(3)
    config = InContextConfig(generations=3, population=4)
    generation = jax.jit(make_in_context_generation(config, copier, ENV, IN_CONTEXT))
    sequence = jnp.array([0, 1, 2, 2, 1, 0], jnp.int32)
    demo = jnp.array([0, 1, 2, 0, 0, 0], jnp.int32)  # right for 3 symbols, then wrong
    key = jax.random.key(4)
    for _ in range(config.generations):
        key, k = jax.random.split(key)
        next_demo, record = generation(None, sequence, demo, k)
        actions, returns = np.asarray(record.trial_actions), np.asarray(record.trial_returns)
        # trial 0 is fully visible: every copier replays the demonstration up to its mistake
        wrong = np.flatnonzero(np.asarray(demo) != np.asarray(sequence))
        stop = wrong[0] + 1 if wrong.size else 6
        np.testing.assert_array_equal(actions[:, 0, :stop], np.tile(demo[:stop], (4, 1)))
        assert (actions[:, 0, stop:] == 3).all()  # positions never reached
        best = np.argmax(returns[:, -1])
        np.testing.assert_array_equal(next_demo, actions[best, -1])  # the best member's last
        assert returns[best, -1] == returns[:, -1].max()
        demo = next_demo
    demos, kept = select_demonstrations(jnp.arange(12).reshape(4, 3), jnp.array([1.0, 3, 3, 0]), 2)
    np.testing.assert_array_equal(demos, [[6, 7, 8], [3, 4, 5]])  # later ones win ties
    np.testing.assert_array_equal(kept, [3, 3])


def test_record_play_over_lifetimes() -> None:
    copier = Copier(3)
    params = IN_CONTEXT.replace(
        demos=jnp.array([[0, 1, 2, 2, 1, 0]]),
        fixed_sequence=True,
        sequence=jnp.array([0, 1, 2, 2, 1, 0]),
        visibility=1.0,
        visibility_decay=False,
    )
    record = jax.jit(lambda k: record_play(copier, None, ENV, params, k, 2, lifetimes=3))(
        jax.random.key(5)
    )
    assert record.trial_returns.shape == (2, 12) and record.trial_actions.shape == (2, 12, 6)
    np.testing.assert_array_equal(record.trial_returns, 6.0)  # a perfect demonstrator copied


def test_generation_loop_resumes(tmp_path) -> None:
    @jax.jit
    def body(carry, key):
        return carry + jax.random.uniform(key, carry.shape), carry.sum()

    def generation(carry, g):
        carry, total = body(carry, jax.random.fold_in(jax.random.key(0), g))
        return carry, {"total": total}

    init, config = jnp.zeros((3,)), {"test": 1}
    full, lines = run_generations(generation, init, 4, tmp_path / "full", config)

    calls = []

    def crashing(carry, g):
        if g == 2 and not calls:
            calls.append(g)
            raise KeyboardInterrupt
        return generation(carry, g)

    with pytest.raises(KeyboardInterrupt):
        run_generations(crashing, init, 4, tmp_path / "resumed", config)
    resumed, lines2 = run_generations(crashing, init, 4, tmp_path / "resumed", config)
    np.testing.assert_array_equal(full, resumed)
    assert lines == lines2 and [m["generation"] for m in lines2] == [0, 1, 2, 3]
    log = (tmp_path / "resumed" / "generations.jsonl").read_text().splitlines()
    assert len(log) == 4


@pytest.mark.slow  # compile-heavy; run with -m slow
def test_in_weights_learner_copies_a_visible_demonstrator() -> None:
    """A fresh PPO agent learns to use the social channel: with a perfect demonstrator always
    visible it reproduces most of a sequence it has barely explored; alone it is far worse."""
    ppo = PPOConfig(
        num_envs=16,
        num_steps=16,
        total_timesteps=16 * 16 * 40,
        recurrent=True,
        num_minibatches=2,
        hidden=(32,),
        embed=(32,),
        gru_hidden=32,
        lr=3e-3,
    )
    config = InWeightsConfig(ppo, generations=2, population=2, num_demos=2, eval_episodes=32)
    params = SocialMemorySequence.in_weights_params(
        7, num_symbols=6, seq_len=8, demos=jnp.zeros((2, 8), jnp.int32)
    )
    generation = jax.jit(make_in_weights_generation(config, ENV, params))
    perfect = jnp.tile(params.sequence, (2, 1))
    demos, m = generation(jax.random.key(6), params, perfect, jnp.array(VISIBILITY["one"]))
    social, alone = np.asarray(m["return_social"]), np.asarray(m["return_alone"])
    assert social.min() >= 5.0, social  # max 8; a blind guesser expects about -0.8
    assert social.mean() - alone.mean() >= 2.0, alone  # the channel carries the answer
    assert demos.shape == (2, 8) and float(m["best_return"]) >= alone.max()
