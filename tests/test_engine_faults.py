"""Faults the model-interface work fixed: config errors found while building a model reach the user as one
line, SEED -1 means a fresh logged seed, CHECKPOINT_PERIOD 0 does not divide by zero."""

import logging
import os

import numpy as np
import pytest
from cli_helpers import ROOT, assert_user_error, run_module

from jaxseg.config import setup_cfg
from jaxseg.engine.train import resolve_seed
from jaxseg.errors import UserError
from jaxseg.models.registry import build_model

QUICKSTART = os.path.join(ROOT, "configs", "quickstart", "shapes_mask_rcnn.yaml")


@pytest.mark.parametrize("key,value", [("MODEL.RESNETS.NORM", "SyncBN"), ("MODEL.RESNETS.DEPTH", "42"),
                                       ("MODEL.RESNETS.NUM_GROUPS", "32"), ("MODEL.FPN.NORM", "BN"),
                                       ("MODEL.FPN.FUSE_TYPE", "max"), ("MODEL.RPN.IN_FEATURES", "['p9']")])
def test_bad_module_values_are_user_errors_at_build_time(key, value):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        build_model(setup_cfg(QUICKSTART, [key, value]))


def test_bad_norm_through_the_cli_is_one_line(tmp_path):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    res = run_module("jaxseg.main", "--config", QUICKSTART, "--predict", str(image), "--output",
                     str(tmp_path / "out"), "MODEL.RESNETS.NORM", "SyncBN")
    assert_user_error(res, "MODEL.RESNETS.NORM", "SyncBN")
    assert not (tmp_path / "out").exists()


def test_negative_seed_is_a_fresh_logged_seed(caplog):
    with caplog.at_level(logging.WARNING):
        a, b = resolve_seed(-1), resolve_seed(-1)
    assert a != b and a >= 0 and b >= 0
    assert f"SEED {a}" in caplog.text and f"SEED {b}" in caplog.text
    assert resolve_seed(7) == 7


def test_training_checkpoint_of_8_devices_restores_on_one(tmp_path):
    """A training checkpoint saved by an 8-device run loads in a 1-device process (it used to fail with
    orbax's "Topology mismatch")."""
    import subprocess
    import sys

    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep = NamedSharding(mesh, PartitionSpec())
    state = {"step": jax.device_put(jnp.int32(3), rep),
             "params": {"w": jax.device_put(jnp.arange(12.0).reshape(3, 4), rep)},
             "opt_state": {"m": jax.device_put(jnp.ones(5), rep)}}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "checkpoints" / "3" / "default", state)
    script = ("import jax, numpy as np\n"
              "from jaxseg.checkpoint.orbax_io import restore_variables\n"
              "assert jax.device_count() == 1\n"
              f"v = restore_variables({str(tmp_path / 'checkpoints')!r}, "
              "{'params': {'w': jax.ShapeDtypeStruct((3, 4), np.float32)}})\n"
              "assert np.array_equal(v['params']['w'], np.arange(12.0).reshape(3, 4)), v\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
