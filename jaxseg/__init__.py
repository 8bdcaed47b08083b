"""jaxseg: instance segmentation in JAX/Flax, weight-compatible with detectron2 and friends.

    cfg = jaxseg.setup_cfg("configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", [])
    model = jaxseg.build_model(cfg)
    variables = jaxseg.load_weights(cfg, "model_final_f10217.pkl")
    instances = jaxseg.Predictor(cfg, variables)(image_bgr)
"""

from jaxseg.errors import UserError

__all__ = ["UserError", "get_cfg", "setup_cfg", "build_model", "load_weights", "Predictor", "read_image"]
__version__ = "0.1.0"

_LAZY = {
    "get_cfg": "jaxseg.config",
    "setup_cfg": "jaxseg.config",
    "build_model": "jaxseg.models.registry",
    "load_weights": "jaxseg.checkpoint.loading",
    "Predictor": "jaxseg.engine.predictor",
    "read_image": "jaxseg.data.image_io",
}


def __getattr__(name: str):
    """Import the heavy pieces (jax, flax) only when they are first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxseg' has no attribute {name!r}")
