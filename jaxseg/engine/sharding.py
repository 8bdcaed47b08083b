"""Device mesh and shardings: batches split along `data`, parameters replicated (or FSDP-sharded).

Multi-host: `maybe_initialize_distributed()` calls jax.distributed.initialize() when the usual
coordinator variables are set (or on SLURM); every host then feeds its local part of the batch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxseg.errors import UserError

DATA_AXIS = "data"


def maybe_initialize_distributed() -> bool:
    """Join a multi-process run if one is configured (JAX_COORDINATOR_ADDRESS or SLURM); True if so."""
    if jax.process_count() > 1:
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
        return True
    return False


def build_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (0: all, over all hosts)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise UserError(f"--num-devices {num_devices}: only {len(devices)} devices are visible")
        if jax.process_count() > 1 and num_devices != len(devices):
            raise UserError("--num-devices must be 0 (all devices) in a multi-host run")
        devices = devices[:num_devices]
    return Mesh(np.array(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_sharding(mesh: Mesh, tree: Any, min_size: int = 2**16) -> Any:
    """Shard each large parameter along its largest axis divisible by the mesh size; the rest replicated."""
    n = mesh.devices.size

    def spec(x):
        if x.size < min_size:
            return replicated(mesh)
        for axis in np.argsort(x.shape)[::-1]:
            if x.shape[axis] % n == 0:
                parts = [None] * x.ndim
                parts[axis] = DATA_AXIS
                return NamedSharding(mesh, PartitionSpec(*parts))
        return replicated(mesh)

    return jax.tree.map(spec, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's part of the batch -> global arrays sharded along `data`."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """SOLVER.IMS_PER_BATCH must split evenly over devices and hosts; returns the per-host batch size."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise UserError(f"SOLVER.IMS_PER_BATCH {global_batch_size} does not split over {n} devices")
    return global_batch_size // jax.process_count()
