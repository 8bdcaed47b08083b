"""Writing files so that an interrupted run never leaves a half-written one."""

from __future__ import annotations

import json
import os
import tempfile


def write_json_atomic(path: str, obj) -> None:
    """Write to a temp file in the same directory, then rename: never a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
