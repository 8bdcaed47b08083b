"""Config machinery: `CfgNode` merges, YAML files with `_BASE_`, `KEY VALUE` overrides, and the entry points.

A config is a tree of `CfgNode`s (a yacs node: a dict with attribute access that can be frozen). The
defaults (`defaults.py`) mirror detectron2's `config/defaults.py` key for key and value for value, so
the YAML files of detectron2 and its projects load unchanged. Mistakes in a file or on the command line
(an unknown key, a value of the wrong type, a missing or malformed file) raise `UserError` naming the
key, where it came from, and the closest known key; so does a key set to a value jaxseg does not
implement (`unsupported.py`, checked by `setup_cfg`).

Model families outside detectron2's core (TensorMask, FCOS, BlendMask, CenterMask, ...) add their keys
with `add_config`: a registered function receives the default tree and adds groups to it; `get_cfg`
applies every registered function.
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as _YacsNode

from jaxseg.config.defaults import CONFIG_VERSION, add_jaxseg_keys, default_tree
from jaxseg.config.unsupported import check_supported
from jaxseg.errors import UserError

__all__ = ["CfgNode", "add_config", "get_cfg", "setup_cfg"]

BASE_KEY = "_BASE_"
_LEAF_TYPES = (tuple, list, str, int, float, bool, type(None))


class CfgNode(_YacsNode):
    """A yacs config node whose merges check keys and types and raise `UserError` on a mistake."""

    def merge_from_file(self, cfg_filename: str) -> None:
        """Merge a YAML file; its `_BASE_` file (relative to it) is merged first, recursively."""
        self._merge_file(str(cfg_filename), ())

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge trailing command-line overrides `KEY VALUE KEY VALUE ...` (e.g. `SOLVER.BASE_LR 0.01`).

        A string value is read as a Python literal when it is one (`0.01`, `True`, `[1, 2]`, `(800,)`),
        otherwise kept as a string.
        """
        opts = list(cfg_list)
        if len(opts) % 2:
            raise UserError(
                f"config overrides on the command line come in KEY VALUE pairs; {opts[-1]!r} has no value"
            )
        for key, value in zip(opts[0::2], opts[1::2]):
            nested: Any = value
            for part in reversed(str(key).split(".")):
                nested = {part: nested}
            self._merge(nested, "on the command line")

    def merge_from_other_cfg(self, cfg_other: Mapping[str, Any]) -> None:
        """Merge another config (or plain nested dict) into this one, with the same checks."""
        self._merge(cfg_other, "in the merged config")

    def full_keys(self) -> list[str]:
        """The dotted key of every value in the tree, e.g. `SEED`, `MODEL.RPN.NMS_THRESH` (not groups)."""
        keys = []
        for name, value in self.items():
            if isinstance(value, CfgNode):
                keys.extend(f"{name}.{sub}" for sub in value.full_keys())
            else:
                keys.append(name)
        return keys

    # -- internals ---------------------------------------------------------------------------------

    def _merge_file(self, path: str, chain: tuple[str, ...]) -> None:
        """Merge `path` after its base; `chain` holds the files that include it (to catch cycles)."""
        real = os.path.realpath(path)
        if real in chain:
            raise UserError(f"config file {path} includes itself through {BASE_KEY}")
        data = _load_yaml(path)
        base = data.pop(BASE_KEY, None)
        if base is not None:
            self._merge_file(_base_path(base, path), chain + (real,))
        _check_version(data, path)
        self._merge(data, f"in {path}")

    def _merge(self, data: Mapping[str, Any], where: str) -> None:
        """Merge a nested mapping into the tree; `where` ("in FILE", "on the command line") goes in errors."""
        if self.is_frozen():
            raise AttributeError("the config is frozen; call cfg.defrost() before merging into it")
        _merge_into(self, data, [], self, where)


def _merge_into(node: CfgNode, data: Mapping[str, Any], prefix: list[str], root: CfgNode, where: str) -> None:
    """Recursively copy `data` into `node`, checking every key against the tree and every value's type."""
    for raw_key, raw_value in data.items():
        key = str(raw_key)
        full_key = ".".join(prefix + [key])
        if root.key_is_deprecated(full_key):
            continue
        if root.key_is_renamed(full_key):
            new_key = root.__dict__[CfgNode.RENAMED_KEYS][full_key]
            raise UserError(f"config key {full_key} {where} was renamed to {new_key}; please update it")
        value = _decode(raw_value)
        if key not in node:
            if not node.is_new_allowed():
                raise UserError(_unknown_key_message(root, _first_leaf(full_key, value), where))
            node[key] = CfgNode(value) if isinstance(value, Mapping) else _check_leaf(value, full_key, where)
        elif isinstance(node[key], CfgNode):
            if not isinstance(value, Mapping):
                raise UserError(
                    f"config key {full_key} {where} is a group of keys, but was given the value {value!r}"
                )
            _merge_into(node[key], value, prefix + [key], root, where)
        else:
            node[key] = _coerce(value, node[key], full_key, where)


def _decode(value: Any) -> Any:
    """Read a string as a Python literal when it is one (as yacs does for YAML and the command line)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _check_leaf(value: Any, full_key: str, where: str) -> Any:
    """Reject values a config cannot hold (a set, a mapping, any other object)."""
    if not isinstance(value, _LEAF_TYPES):
        raise UserError(
            f"bad value for config key {full_key} {where}: {value!r} is {_type_name(value)}, "
            "which a config cannot hold"
        )
    return value


def _coerce(value: Any, default: Any, full_key: str, where: str) -> Any:
    """Return `value` as the type of `default`, allowing what detectron2 allows, else raise `UserError`.

    Allowed: the same type; None on either side; list <-> tuple; an int where a float is expected.
    """
    if value is None:
        return value
    if default is None:
        return _check_leaf(value, full_key, where)
    if _is_sequence(value) and _is_sequence(default):
        return _same_containers(value, default)
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(default, float):
        return float(value)
    if type(value) is type(default):
        return value
    raise UserError(
        f"bad value for config key {full_key} {where}: {value!r} is {_type_name(value)}, "
        f"expected {_type_name(default)} (default {default!r})"
    )


def _same_containers(value: Any, default: Any) -> Any:
    """`value` with the list/tuple types of `default`, also nested: [[1, 2]] against ((0, 0),) is ((1, 2),).

    Items are left as they are (an int in a list of floats stays an int, as in detectron2).
    """
    if not (_is_sequence(value) and _is_sequence(default)):
        return value
    inner = default[0] if default else None
    return type(default)(_same_containers(item, inner) for item in value)


def _is_sequence(value: Any) -> bool:
    """A list or a tuple."""
    return isinstance(value, (list, tuple))


def _type_name(value: Any) -> str:
    """A readable type name with its article: 'a string', 'an int', 'a mapping of keys'."""
    names = {bool: "a bool", int: "an int", float: "a float", str: "a string"}
    names.update({list: "a list", tuple: "a tuple"})
    if isinstance(value, Mapping):
        return "a mapping of keys"
    return names.get(type(value), f"a {type(value).__name__}")


def _first_leaf(full_key: str, value: Any) -> str:
    """For an unknown group given as a mapping, the full key of its first leaf (the key the user typed)."""
    while isinstance(value, Mapping) and value:
        name, value = next(iter(value.items()))
        full_key = f"{full_key}.{name}"
    return full_key


def _unknown_key_message(root: CfgNode, full_key: str, where: str) -> str:
    """'unknown config key K WHERE; did you mean M?' with M the closest known key, when one is close."""
    message = f"unknown config key {full_key} {where}"
    close = difflib.get_close_matches(full_key, root.full_keys(), n=1, cutoff=0.5)
    if close:
        return f"{message}; did you mean {close[0]}?"
    return f"{message}; no known key is close to it (jaxseg.config.get_cfg() lists them all)"


def _load_yaml(path: str) -> dict[str, Any]:
    """Read and parse one YAML config file into a dict; every failure is a `UserError` naming the file."""
    if not os.path.isfile(path):
        raise UserError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from e
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse config file {path}: {_yaml_problem(e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of KEY: value, not {_type_name(data)}")
    return data


# Arithmetic on literals with list comprehensions: enough for detectron2's `!!python/object/apply:eval`
# anchor sizes (Base-RetinaNet.yaml), with no names but the loop variables, no calls, no attributes.
_EVAL_NODES = (
    ast.Expression, ast.ListComp, ast.comprehension, ast.List, ast.Tuple, ast.Constant, ast.Name,
    ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop,
)  # fmt: skip


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader plus detectron2's one unsafe idiom, `!!python/object/apply:eval [EXPR]`."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """Evaluate the expression of an `eval` tag if it only does arithmetic on literals (see _EVAL_NODES)."""
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else []
    if len(args) != 1 or not isinstance(args[0], str):
        raise _eval_error("eval takes one expression string", node)
    try:
        tree = ast.parse(args[0], mode="eval")
    except SyntaxError as e:
        raise _eval_error(f"eval: {e.msg}", node) from e
    for part in ast.walk(tree):
        if not isinstance(part, _EVAL_NODES):
            raise _eval_error(f"eval may only do arithmetic on literals, not {type(part).__name__}", node)
    try:
        return eval(compile(tree, "<config>", "eval"), {"__builtins__": {}})  # noqa: S307 (checked above)
    except (ArithmeticError, NameError, TypeError, ValueError, MemoryError) as e:
        raise _eval_error(f"eval: {e}", node) from e


def _eval_error(problem: str, node: yaml.Node) -> yaml.YAMLError:
    """A YAML error pointing at the `eval` tag's line."""
    return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)


_ConfigLoader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _construct_eval)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """'line N: what went wrong' for a YAML parse error."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _base_path(base: Any, including_file: str) -> str:
    """Resolve a `_BASE_` value: `~` is expanded; a relative path is relative to the including file."""
    if not isinstance(base, str) or not base:
        raise UserError(f"{BASE_KEY} in config file {including_file} must be a file path, not {base!r}")
    base = os.path.expanduser(base)
    if os.path.isabs(base):
        return base
    return os.path.normpath(os.path.join(os.path.dirname(including_file), base))


def _check_version(data: Mapping[str, Any], path: str) -> None:
    """Only detectron2's current config version (2) is understood; older files need upgrading."""
    version = _decode(data.get("VERSION", CONFIG_VERSION))
    if version != CONFIG_VERSION:
        raise UserError(
            f"config file {path} has VERSION {version!r}; only version {CONFIG_VERSION} configs are "
            "supported (upgrade it with detectron2's config.compat.upgrade_config)"
        )


# -- public entry points ----------------------------------------------------------------------------

_EXTENSIONS: list[Callable[[CfgNode], None]] = []


def add_config(fn: Callable[[CfgNode], None]) -> Callable[[CfgNode], None]:
    """Register `fn(cfg)`, which adds a model family's default keys to the tree; usable as a decorator.

    `get_cfg` calls every registered function in registration order, so the family's module must be
    imported before `get_cfg` (importing `jaxseg.models` imports them all). Registering twice is a no-op.
    """
    if fn not in _EXTENSIONS:
        _EXTENSIONS.append(fn)
    return fn


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the default config (detectron2's keys plus the registered families')."""
    import jaxseg.models  # noqa: F401  (the built-in families register their keys when imported)

    cfg = CfgNode(default_tree())
    add_jaxseg_keys(cfg)
    for extend in _EXTENSIONS:
        extend(cfg)
    return cfg


def setup_cfg(config_file: str | None, opts: Sequence[str] = ()) -> CfgNode:
    """Defaults, then `config_file` (if any), then `KEY VALUE` overrides; checked against what jaxseg
    implements (`unsupported.check_supported`) and returned frozen."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    check_supported(cfg)
    cfg.freeze()
    return cfg
