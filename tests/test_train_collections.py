"""A model's train_collections(): trainable BatchNorm statistics are updated by the train step, from the whole
global batch, so a step sharded over 8 devices gives the statistics of one device."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.config import setup_cfg
from jaxseg.data.input_spec import InputSpec
from jaxseg.data.target_spec import TargetSpec
from jaxseg.engine import sharding as shd
from jaxseg.engine.train import init_train_state, make_train_step
from jaxseg.models.meta_arch import MetaArch


class BatchNormNet(nn.Module, MetaArch):
    """conv -> trainable BatchNorm -> a loss that pulls the features to zero."""

    input_spec: InputSpec
    target_spec: TargetSpec
    num_classes: int = 1

    def setup(self):
        self.conv = nn.Conv(4, (3, 3), name="conv")
        self.bn = nn.BatchNorm(momentum=0.9, name="bn")

    def features(self, images, image_hw, train: bool):
        return self.bn(self.conv(self.input_spec.normalize(images, image_hw)), use_running_average=not train)

    def __call__(self, images, image_hw):
        return {"features": self.features(images, image_hw, False)}

    def losses(self, key, batch):
        return {"loss_l2": jnp.mean(jnp.square(self.features(batch["images"], batch["image_hw"], True) - 1.0))}

    def train_collections(self):
        return ("batch_stats",)


def test_batch_statistics_update_from_the_global_batch():
    assert jax.device_count() >= 8, "conftest sets 8 fake CPU devices"
    cfg = setup_cfg(None, ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.WARMUP_ITERS", "0"])
    spec = InputSpec(pixel_mean=(100.0, 110.0, 120.0), pixel_std=(50.0, 50.0, 50.0), size_divisibility=8)
    model = BatchNormNet(spec, TargetSpec())
    rng = np.random.default_rng(0)
    batch = {"images": rng.integers(0, 255, (8, 16, 16, 3)).astype(np.uint8),
             "image_hw": np.array([[16, 16]] * 4 + [[12, 8]] * 4, np.int32),
             "gt_boxes": np.zeros((8, 1, 4), np.float32), "gt_classes": np.zeros((8, 1), np.int32),
             "gt_valid": np.zeros((8, 1), bool)}
    stats = {}
    for n in (1, 8):
        mesh = shd.build_mesh(n)
        state, tx = init_train_state(cfg, model, mesh, seed=0)
        initial = jax.device_get(state.model_state["batch_stats"])
        step = make_train_step(cfg, model, tx, mesh, state, jax.random.PRNGKey(0))
        new, _ = step(state, shd.global_batch(batch, mesh))
        stats[n] = jax.device_get(new.model_state["batch_stats"])
    # the expected running mean: momentum 0.9 from the initial 0 towards the mean over all 8 images
    np.testing.assert_allclose(initial["bn"]["mean"], 0.0)
    for a, b in zip(jax.tree.leaves(stats[8]), jax.tree.leaves(stats[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    variables = {"params": jax.device_get(init_train_state(cfg, model, shd.build_mesh(1), seed=0)[0].params)}
    x = model.apply(variables, jnp.asarray(batch["images"]), jnp.asarray(batch["image_hw"]),
                    method=lambda m, i, hw: m.conv(m.input_spec.normalize(i, hw)))
    expected = 0.1 * np.asarray(x).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(stats[8]["bn"]["mean"], expected, rtol=1e-4, atol=1e-6)
