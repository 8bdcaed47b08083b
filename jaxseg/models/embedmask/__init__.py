"""EmbedMask (gakkiri/EmbedMask, on FCOS): masks from per-pixel and per-proposal embeddings. Importing it registers
the "EmbedMask" meta-architecture (also built for "OneStageDetector" configs with MODEL.MASK_ON) and its keys."""

from jaxseg.models.embedmask import config, embedmask  # noqa: F401
