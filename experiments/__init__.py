"""Runnable studies: one module per experiment, each with a typed config and a CLI."""
