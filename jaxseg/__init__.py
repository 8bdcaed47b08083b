"""jaxseg: instance segmentation in JAX/Flax, weight-compatible with detectron2 and friends."""

from jaxseg.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
