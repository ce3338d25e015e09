"""Pieces every gridworld shares: cell codes, directions, colours and the RGB renderer."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Cell codes used in every gridworld's integer grid.
EMPTY, WALL, AGENT = 0, 1, 2
FIRST_OBJECT = 3  # objects (coloured goals, keys, doors, ...) are FIRST_OBJECT + i

# Directions as (row, col) steps: 0 = up (north), 1 = right (east), 2 = down, 3 = left.
DIRECTIONS = jnp.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=jnp.int32)

# RGB palette indexed by cell code.
PALETTE = jnp.array(
    [
        [24, 24, 24],  # empty
        [110, 110, 110],  # wall
        [255, 255, 255],  # agent
        [220, 50, 50],  # object 0: red
        [50, 190, 70],  # object 1: green
        [60, 110, 230],  # object 2: blue
        [235, 200, 40],  # object 3: yellow
        [170, 80, 210],  # object 4: purple
        [40, 200, 200],  # object 5: cyan
        [240, 140, 40],  # object 6: orange
        [200, 200, 200],  # object 7: grey
    ],
    dtype=jnp.uint8,
)


def walled_grid(height: int, width: int) -> jax.Array:
    """An int32 [height, width] grid of EMPTY cells surrounded by a one-cell WALL border."""
    grid = jnp.full((height, width), WALL, dtype=jnp.int32)
    return grid.at[1:-1, 1:-1].set(EMPTY)


def render_grid(grid: jax.Array, tile: int = 16) -> jax.Array:
    """RGB image uint8 [H*tile, W*tile, 3] of an int grid [H, W] of cell codes."""
    image = PALETTE[jnp.clip(grid, 0, PALETTE.shape[0] - 1)]  # [H, W, 3]
    image = jnp.repeat(jnp.repeat(image, tile, axis=0), tile, axis=1)
    # one-pixel dark grid lines so cells stay distinguishable
    lines = (jnp.arange(image.shape[0]) % tile == 0)[:, None] | (
        jnp.arange(image.shape[1]) % tile == 0
    )[None, :]
    return jnp.where(lines[..., None], jnp.uint8(0), image)
