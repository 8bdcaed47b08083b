"""Device mesh and shardings: batches split along `data`, parameters replicated (or FSDP-sharded).

Multi-host: `maybe_initialize_distributed()` calls jax.distributed.initialize() when the environment asks
for a multi-process run (see `distributed_settings`; launch/README.md); every host then feeds its local
part of the batch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxseg.errors import UserError

DATA_AXIS = "data"
logger = logging.getLogger(__name__)


def _env_int(env: Mapping[str, str], *names: str) -> int | None:
    """The first of `names` set in env, as an int (None if none is set); a non-integer is a UserError."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise UserError(f"${name} must be an integer, got {value!r}") from None
    return None


def distributed_settings(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The jax.distributed.initialize() arguments the environment asks for, or None for a single process.

    Read from the environment only (nothing here touches a JAX backend), first match wins:

    * ``JAXSEG_NUM_PROCESSES`` (1: single process) with ``JAXSEG_PROCESS_ID`` and ``JAXSEG_COORDINATOR``
      (host:port of process 0; ``JAX_COORDINATOR_ADDRESS`` also accepted);
    * ``JAX_COORDINATOR_ADDRESS``, with ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` when set (else jax
      detects them from the cluster);
    * SLURM with more than one task (``SLURM_NTASKS`` > 1): jax reads everything from SLURM.
    """
    env = os.environ if env is None else env
    count = _env_int(env, "JAXSEG_NUM_PROCESSES")
    if count is not None:
        if count < 1:
            raise UserError(f"$JAXSEG_NUM_PROCESSES must be at least 1, got {count}")
        if count == 1:
            return None
        pid = _env_int(env, "JAXSEG_PROCESS_ID")
        coordinator = env.get("JAXSEG_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS")
        if pid is None or not coordinator:
            raise UserError("$JAXSEG_NUM_PROCESSES > 1 needs $JAXSEG_PROCESS_ID and $JAXSEG_COORDINATOR (host:port)")
        if not 0 <= pid < count:
            raise UserError(f"$JAXSEG_PROCESS_ID {pid} is not in [0, {count})")
        return {"coordinator_address": coordinator, "num_processes": count, "process_id": pid}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                "num_processes": _env_int(env, "JAX_NUM_PROCESSES"), "process_id": _env_int(env, "JAX_PROCESS_ID")}
    if (_env_int(env, "SLURM_NTASKS") or 1) > 1:
        return {}
    return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Join a multi-process run if the environment asks for one (`distributed_settings`); True if in one.

    Decides before touching the backend: jax.distributed.initialize() must come before any JAX computation
    (even jax.process_count()). CPU processes talk over gloo collectives.
    """
    if jax.distributed.is_initialized():
        return True
    settings = distributed_settings(env)
    if settings is None:
        return False
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**settings)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"could not join the multi-process run ({settings or 'from SLURM'}): {e} "
                        "(see launch/README.md for the variables to set)") from None
    logger.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                jax.local_device_count())
    return True


def build_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (0: all, over all hosts)."""
    if num_devices < 0:
        raise UserError(f"--num-devices {num_devices}: must be 0 (all devices) or a positive count")
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


# -- processes: who writes, and JSON across processes ------------------------------------------


def process_info() -> tuple[int, int]:
    """(index, count) of this process in a jax.distributed run; (0, 1) otherwise (never starts a backend)."""
    if not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """Process 0, the one that writes files."""
    return process_info()[0] == 0


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)


def _from_json_bytes(buf: np.ndarray) -> Any:
    return json.loads(np.asarray(buf, np.uint8).tobytes().decode("utf-8"))


def all_gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-serialisable `obj`, in process order (a collective: every process calls it).

    Sent as one length-prefixed byte buffer per process (padded to the longest) over process_allgather.
    """
    if process_info()[1] == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = _json_bytes(obj)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [_from_json_bytes(gathered[i, :int(n)]) for i, n in enumerate(sizes)]


def broadcast_json(obj: Any) -> Any:
    """Process 0's JSON-serialisable `obj` on every process (a collective; the others' `obj` is ignored)."""
    if process_info()[1] == 1:
        return obj
    from jax.experimental import multihost_utils

    main = is_main_process()
    data = _json_bytes(obj) if main else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.array(data.size if main else 0, np.int64)))
    buf = data if main else np.zeros(size, np.uint8)
    return _from_json_bytes(multihost_utils.broadcast_one_to_all(buf))
