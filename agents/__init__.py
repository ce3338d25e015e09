"""Learning algorithms as pure functions over explicit state."""

from agents import platform as _platform

_platform.configure()
