"""Model-zoo names in MODEL.WEIGHTS -> local files. jaxseg never downloads.

``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` (as detectron2's zoo configs write it) names the file
``$JAXSEG_WEIGHTS/ImageNetPretrained/MSRA/R-50.pkl`` (default ``~/.cache/jaxseg/weights/...``): the path
under the prefix is kept, so files of several zoos can share the directory. A file that is not there is a
UserError that says where to put it and the URL it comes from. Other URLs are refused the same way.
"""

from __future__ import annotations

import os

from jaxseg.errors import UserError

__all__ = ["PREFIXES", "resolve_weights_path", "weights_dir"]

# zoo prefix -> the URL prefix its files are published under
PREFIXES: dict[str, str] = {
    "detectron2://": "https://dl.fbaipublicfiles.com/detectron2/",
}


def weights_dir() -> str:
    """Where zoo files live: $JAXSEG_WEIGHTS, default ~/.cache/jaxseg/weights."""
    root = os.environ.get("JAXSEG_WEIGHTS") or os.path.join("~", ".cache", "jaxseg", "weights")
    return os.path.abspath(os.path.expanduser(root))


def _split_query(rest: str) -> tuple[str, str]:
    """`X.pth?matching_heuristics=True` -> ("X.pth", "?matching_heuristics=True")."""
    if "?" in rest:
        base, query = rest.split("?", 1)
        return base, "?" + query
    return rest, ""


def resolve_weights_path(path: str) -> str:
    """The local file or directory MODEL.WEIGHTS `path` names.

    A zoo name (``detectron2://X``) resolves to ``weights_dir()/X`` when that exists (a detectron2
    ``?matching_heuristics=True`` suffix is kept); any other path without ``://`` is returned as it is.
    Raises UserError for a zoo file not there (saying where to put it and its URL) and for other URLs.
    """
    path = os.fspath(path)
    for prefix, url in PREFIXES.items():
        if not path.startswith(prefix):
            continue
        rest, query = _split_query(path[len(prefix):].lstrip("/"))
        rel = os.path.normpath(rest) if rest else ""
        if not rel or rel == "." or rel.startswith(".."):
            raise UserError(f"MODEL.WEIGHTS {path!r}: expected {prefix}<path of a file of that zoo>, "
                            f"e.g. {prefix}ImageNetPretrained/MSRA/R-50.pkl")
        local = os.path.join(weights_dir(), rel)
        if not os.path.exists(local):
            raise UserError(f"MODEL.WEIGHTS {path} is not here: jaxseg does not download; fetch {url}{rest} and put "
                            f"it at {local} (the directory is $JAXSEG_WEIGHTS, default ~/.cache/jaxseg/weights)")
        return local + query
    if "://" in path:
        known = ", ".join(f"{p}X ({PREFIXES[p]}X)" for p in PREFIXES)
        raise UserError(f"MODEL.WEIGHTS {path!r} is a URL; jaxseg does not download: fetch the file and give its "
                        f"local path (zoo names resolved from {weights_dir()}: {known})")
    return path
