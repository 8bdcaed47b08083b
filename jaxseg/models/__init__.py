"""Model families. Importing this package registers every built-in family's builders and config keys."""

from jaxseg.models import blendmask, embedmask, fcos, rcnn, tensormask  # noqa: F401
