"""BlendMask (AdelaiDet): FCOS + basis module + blender. Importing it registers the "BlendMask" meta-architecture
and its config keys."""

from jaxseg.models.blendmask import blendmask, config  # noqa: F401
