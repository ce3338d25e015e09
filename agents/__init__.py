"""Learning algorithms as pure functions over explicit state (importing it sets ``envs.platform``'s
XLA flags through ``envs``)."""

import envs as _envs  # noqa: F401
