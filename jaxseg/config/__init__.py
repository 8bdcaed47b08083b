"""jaxseg's config: detectron2's keys and defaults, YAML files with `_BASE_`, `KEY VALUE` overrides.

* `config.py`: `CfgNode` (checked merges), YAML loading, `get_cfg`, `setup_cfg`, `add_config`;
* `defaults.py`: detectron2's default tree and the keys jaxseg adds to it;
* `unsupported.py`: keys jaxseg does not implement, refused by `setup_cfg` when set.

Model families outside detectron2's core (TensorMask, FCOS, BlendMask, CenterMask, ...) add their keys
with `add_config` (a registered function receives the default tree and adds groups to it; `get_cfg`
applies every registered function) and refuse the ones they do not implement with
`register_unsupported`.
"""

from jaxseg.config.config import CfgNode, add_config, get_cfg, setup_cfg
from jaxseg.config.unsupported import check_supported, register_unsupported

__all__ = ["CfgNode", "add_config", "check_supported", "get_cfg", "register_unsupported", "setup_cfg"]
