"""Runnable studies: one module per experiment, each with a typed config and a CLI.

Several hosts: start the same command on every host with ``JAX_COORDINATOR_ADDRESS``
(``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set; importing this
package then calls ``jax.distributed.initialize`` with them, before any computation.
"""

import os

if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    import jax

    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
