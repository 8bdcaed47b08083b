"""TensorMask (detectron2 project): importing it registers the "TensorMask" meta-architecture and its config keys."""

from jaxseg.models.tensormask import config, tensormask  # noqa: F401
