"""Pure-JAX gridworlds: Goal Sequence, Memory Sequence and the multi-skill world."""
