"""Torch-free readers of checkpoint files: detectron2 and Caffe2 ``.pkl``, PyTorch ``.pth`` (zip and legacy).

Every pickle goes through :class:`RestrictedUnpickler`, whose ``find_class`` resolves only an explicit
allow-list of harmless globals (containers, numpy array reconstruction, PyTorch tensor rebuilds mapped to
local stand-ins); any other global is refused before anything is called. PyTorch tensors become numpy
arrays built from the raw storage bytes, so torch is never imported.

The file-level rules follow detectron2's ``DetectionCheckpointer._load_file``:

- ``.pkl`` holding both ``"model"`` and ``"__author__"``: detectron2 format, names as they are;
- any other ``.pkl``: Caffe2 / Detectron1 blobs (``data["blobs"]`` if present), ``*_momentum`` dropped,
  renamed by the Caffe2 rules of :mod:`jaxseg.checkpoint.c2_names`, ``matching_heuristics`` on;
- ``.pyth`` (pycls): ``model_state`` without ``num_batches_tracked``, ``matching_heuristics`` on;
- ``.pth`` / ``.pt`` / ``.pth.tar`` / ``.ckpt``: a PyTorch file; its ``"model"`` entry if it has one, else
  the whole object is the state dict. ``path?matching_heuristics=True`` turns heuristics on.

A ``module.`` prefix carried by every key (DistributedDataParallel) is stripped.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import parse_qs

import ml_dtypes
import numpy as np

from jaxseg.checkpoint.c2_names import convert_c2_names
from jaxseg.errors import UserError

__all__ = ["RestrictedUnpickler", "read_checkpoint", "read_pickle", "read_torch_file"]

TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Exceptions that a truncated or corrupt file can raise while it is parsed.
_CORRUPT_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    zipfile.BadZipFile,
    struct.error,
    OverflowError,
    UnicodeDecodeError,
    RecursionError,
    MemoryError,
)


class CorruptFile(pickle.UnpicklingError):
    """Raised inside the readers for a structural problem; turned into a UserError naming the file."""


# ----------------------------------------------------------------------------------------------------
# Stand-ins for PyTorch objects
# ----------------------------------------------------------------------------------------------------


class _TorchType:
    """Stand-in for a ``torch.<X>Storage`` class or a ``torch.<dtype>``: carries the numpy dtype.

    Instances are shared by every load, so they refuse the pickle BUILD opcode (``__setstate__``) and
    attribute assignment: a file cannot alter them for the next one.
    """

    __slots__ = ("name", "dtype")
    name: str
    dtype: np.dtype

    def __init__(self, name: str, dtype: np.dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, key: str, value: Any) -> None:
        raise CorruptFile(f"attempt to modify torch.{self.name}")

    def __setstate__(self, state: Any) -> None:
        raise CorruptFile(f"attempt to modify torch.{self.name}")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """One storage of a PyTorch file: dtype, element count, and its data once read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class _StorageSlice:
    """What a persistent id resolves to: a storage, or (legacy views) a window of one, in elements."""

    storage: _Storage
    offset: int
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor awaiting its storage bytes: turned into an array by :func:`_materialize`."""

    storage: _StorageSlice
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: np.dtype | None = None  # set by _rebuild_tensor_v3, whose storage is untyped bytes


_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}

_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16,
    "short": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64, "cfloat": np.complex64,
    "complex128": np.complex128, "cdouble": np.complex128,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}  # fmt: skip


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """Checks that a pickled size or stride is a sequence of non-negative ints."""
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise CorruptFile(f"bad tensor {what} {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2``."""
    if not isinstance(storage, _StorageSlice):
        raise CorruptFile(f"tensor rebuilt from {type(storage).__name__}, not from a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CorruptFile(f"bad storage offset {storage_offset!r}")
    size, stride = _as_int_tuple(size, "size"), _as_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CorruptFile(f"tensor size {size} and stride {stride} differ in length")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    *_: Any,
) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v3``: untyped storage read as ``dtype``."""
    if not isinstance(dtype, _TorchType):
        raise CorruptFile(f"bad tensor dtype {dtype!r}")
    ref = _rebuild_tensor(storage, storage_offset, size, stride)
    return _TensorRef(ref.storage, ref.offset, ref.size, ref.stride, dtype.dtype)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter`` (and ``_with_state``): the data itself."""
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """Stand-in for ``torch._tensor._rebuild_from_type_v2``: plain tensors and parameters only."""
    if new_type not in (_TENSOR_CLASS, _PARAMETER_CLASS):
        raise CorruptFile(f"tensor subclass {new_type!r}")
    if func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter):
        raise CorruptFile(f"rebuild function {func!r}")
    return func(*args)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to carry bytes."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise CorruptFile(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_TENSOR_CLASS = _TorchType("Tensor", np.dtype(np.float32))
_PARAMETER_CLASS = _TorchType("Parameter", np.dtype(np.float32))


# ----------------------------------------------------------------------------------------------------
# The restricted unpickler
# ----------------------------------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's pickle helpers under the module names of numpy 1.x and 2.x, taken from this numpy."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.arange(2).__reduce_ex__(5)[0]
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        found[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        found[(f"{core}.multiarray", "scalar")] = scalar
        found[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return found


def _torch_globals() -> dict[tuple[str, str], Any]:
    """PyTorch names a state dict refers to, each mapped to a local stand-in."""
    found: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TENSOR_CLASS,
        ("torch._tensor", "Tensor"): _TENSOR_CLASS,
        ("torch.nn.parameter", "Parameter"): _PARAMETER_CLASS,
        ("torch", "Size"): tuple,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        for module in ("torch", "torch.cuda", "torch.storage"):
            found[(module, name)] = _TorchType(name, dtype)
    for name, dtype in _TORCH_DTYPES.items():
        found[("torch", name)] = _TorchType(name, np.dtype(dtype))
    return found


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1_encode,
    **_numpy_globals(),
    **_torch_globals(),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals and refuses every other one.

    ``persistent_load`` resolves PyTorch storage ids through ``storages`` when given; without it a
    persistent id is a corrupt file.
    """

    def __init__(
        self,
        file: IO[bytes],
        source: str,
        storages: Callable[[tuple], _StorageSlice] | None = None,
        encoding: str = "ASCII",
    ):
        super().__init__(file, encoding=encoding)
        self._source = source
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        """Returns the allow-listed object for ``module.name``; raises UserError for anything else."""
        if module == "__builtin__":  # the Python 2 name, which protocol 2 also writes
            module = "builtins"
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda data: _legacy_storage_from_bytes(data, self._source)
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            hint = "; if it holds a whole model, save model.state_dict() instead" if "torch" in module else ""
            raise UserError(
                f"{self._source}: refused to load the global '{module}.{name}' from this pickle: a "
                "checkpoint may hold only tensors, arrays, numbers, strings and containers "
                f"(the file may be malicious{hint})"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        """Resolves a PyTorch storage id."""
        if self._storages is None:
            raise CorruptFile(f"unexpected persistent id {pid!r}")
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CorruptFile(f"persistent id {pid!r} is not a storage (a pickled module?)")
        return self._storages(pid)


def _unpickle(file: IO[bytes], source: str, **kwargs: Any) -> Any:
    """Loads one pickle from ``file`` with the restricted unpickler."""
    return RestrictedUnpickler(file, source, **kwargs).load()


# ----------------------------------------------------------------------------------------------------
# Storages and tensors
# ----------------------------------------------------------------------------------------------------


def _storage_type(pid: tuple) -> _TorchType:
    """The storage type of a persistent id (its second field)."""
    if len(pid) < 5 or not isinstance(pid[1], _TorchType) or pid[1].name not in _STORAGE_DTYPES:
        raise CorruptFile(f"bad storage id {pid!r}")
    return pid[1]


def _fill_storage(storage: _Storage, raw: bytes, little_endian: bool) -> None:
    """Sets a storage's data from its raw bytes, byte-swapped to native order when needed."""
    nbytes = storage.numel * storage.dtype.itemsize
    if len(raw) < nbytes:
        raise CorruptFile(f"storage holds {len(raw)} bytes, {nbytes} expected (truncated?)")
    data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    if little_endian != (sys.byteorder == "little") and storage.dtype.itemsize > 1:
        data = data.byteswap()
    storage.data = data


def _tensor_array(ref: _TensorRef) -> np.ndarray:
    """A contiguous, writable copy of the elements a tensor reference points at."""
    root = ref.storage.storage
    if root.data is None:
        raise CorruptFile("a tensor's storage is missing from the file")
    data = root.data[ref.storage.offset : ref.storage.offset + ref.storage.numel]
    if ref.dtype is not None and ref.dtype != data.dtype:
        usable = data.nbytes - data.nbytes % ref.dtype.itemsize
        data = data.view(np.uint8)[:usable].view(ref.dtype)
    if 0 in ref.size:
        return np.zeros(ref.size, dtype=data.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= data.size:
        raise CorruptFile(f"tensor of size {ref.size} reaches past the end of its storage ({data.size})")
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(data[ref.offset :], shape=ref.size, strides=strides)
    return np.array(view, order="C", copy=True)


def _materialize(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """Replaces tensor references by arrays throughout dicts, lists and tuples (dicts become plain)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _TensorRef):
        result: Any = _tensor_array(obj)
    elif isinstance(obj, _StorageSlice):
        result = _tensor_array(_TensorRef(obj, 0, (obj.numel,), (1,)))
    elif isinstance(obj, dict) and not isinstance(obj, collections.Counter):
        result = memo[id(obj)] = {}
        result.update((k, _materialize(v, memo)) for k, v in obj.items())
    elif isinstance(obj, list):
        result = memo[id(obj)] = []
        result.extend(_materialize(v, memo) for v in obj)
    elif isinstance(obj, tuple):
        result = tuple(_materialize(v, memo) for v in obj)
    else:
        result = obj
    memo[id(obj)] = result
    return result


# ----------------------------------------------------------------------------------------------------
# PyTorch files
# ----------------------------------------------------------------------------------------------------


def _zip_prefix(archive: zipfile.ZipFile) -> str:
    """The top folder of a PyTorch zip archive (``archive/`` or the file's stem), holding ``data.pkl``."""
    names = archive.namelist()
    if any(n.endswith("/constants.pkl") for n in names):
        raise CorruptFile("a TorchScript archive (torch.jit.save), not a checkpoint saved with torch.save")
    for name in names:
        if name.count("/") == 1 and name.endswith("/data.pkl"):
            return name[: -len("data.pkl")]
    raise CorruptFile("zip archive without data.pkl: not a PyTorch checkpoint")


def _zip_storage_loader(archive: zipfile.ZipFile, prefix: str, little_endian: bool) -> Callable:
    """A persistent-id resolver reading ``<prefix>data/<key>`` records of a zip checkpoint."""
    cache: dict[str, _Storage] = {}

    def load(pid: tuple) -> _StorageSlice:
        dtype, key, numel = _storage_type(pid).dtype, str(pid[2]), pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise CorruptFile(f"bad storage size in {pid!r}")
        if key not in cache:
            storage = _Storage(dtype, numel)
            _fill_storage(storage, archive.read(f"{prefix}data/{key}"), little_endian)
            cache[key] = storage
        return _StorageSlice(cache[key], 0, cache[key].numel)

    return load


def _read_torch_zip(file: IO[bytes], source: str) -> Any:
    """Reads a zip-format PyTorch file (torch >= 1.6)."""
    with zipfile.ZipFile(file) as archive:
        prefix = _zip_prefix(archive)
        names = set(archive.namelist())
        order = "little"
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode().strip()
        if order not in ("little", "big"):
            raise CorruptFile(f"unknown byte order {order!r}")
        loader = _zip_storage_loader(archive, prefix, order == "little")
        with archive.open(prefix + "data.pkl") as pkl:
            obj = _unpickle(pkl, source, storages=loader)
    return _materialize(obj)


def _legacy_storage_loader(storages: dict[str, _Storage]) -> Callable:
    """A persistent-id resolver for the legacy format; the bytes come after the object pickle."""

    def load(pid: tuple) -> _StorageSlice:
        dtype, key, numel = _storage_type(pid).dtype, str(pid[2]), pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise CorruptFile(f"bad storage size in {pid!r}")
        storage = storages.setdefault(key, _Storage(dtype, numel))
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return _StorageSlice(storage, 0, storage.numel)
        if not isinstance(view, tuple) or len(view) != 3:
            raise CorruptFile(f"bad storage view in {pid!r}")
        _view_key, offset, size = view
        return _StorageSlice(storage, int(offset), int(size))

    return load


def _read_legacy_storages(
    file: IO[bytes], source: str, storages: dict[str, _Storage], little_endian: bool
) -> None:
    """Reads the storage key list, then each storage: an 8-byte element count and the raw bytes."""
    keys = _unpickle(file, source)
    if not isinstance(keys, list):
        raise CorruptFile("the legacy storage key list is missing")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CorruptFile(f"storage {key!r} is not used by the pickled object")
        header = file.read(8)
        if len(header) != 8:
            raise CorruptFile("file ends inside the storages (truncated?)")
        count = int.from_bytes(header, "little" if little_endian else "big", signed=True)
        if count != storage.numel:
            raise CorruptFile(f"storage {key!r} has {count} elements, {storage.numel} expected")
        _fill_storage(storage, file.read(count * storage.dtype.itemsize), little_endian)


def _read_torch_legacy(file: IO[bytes], source: str, keep_storage: bool = False) -> Any:
    """Reads a legacy-format PyTorch file (magic number, protocol, system info, object, storages)."""
    if file.read(1) != b"\x80":
        raise CorruptFile("not a PyTorch file: neither a zip archive nor a legacy-format pickle")
    file.seek(0)
    magic = _unpickle(file, source)
    if magic != LEGACY_MAGIC:
        raise CorruptFile("neither a zip archive nor a legacy PyTorch file (bad magic number)")
    protocol = _unpickle(file, source)
    if protocol != LEGACY_PROTOCOL:
        raise CorruptFile(f"unsupported legacy protocol version {protocol!r}")
    sys_info = _unpickle(file, source)
    little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    storages: dict[str, _Storage] = {}
    obj = _unpickle(file, source, storages=_legacy_storage_loader(storages), encoding="latin1")
    _read_legacy_storages(file, source, storages, little_endian)
    return obj if keep_storage else _materialize(obj)


def _legacy_storage_from_bytes(data: Any, source: str) -> _StorageSlice:
    """Stand-in for ``torch.storage._load_from_bytes``: a storage that plain ``pickle`` wrote."""
    if not isinstance(data, (bytes, bytearray)):
        raise CorruptFile("torch.storage._load_from_bytes without bytes")
    buffer = io.BytesIO(data)
    if data[:2] == b"PK":
        with zipfile.ZipFile(buffer) as archive:
            prefix = _zip_prefix(archive)
            loader = _zip_storage_loader(archive, prefix, True)
            with archive.open(prefix + "data.pkl") as pkl:
                obj = _unpickle(pkl, source, storages=loader)
    else:
        obj = _read_torch_legacy(buffer, source, keep_storage=True)
    if not isinstance(obj, _StorageSlice):
        raise CorruptFile("torch.storage._load_from_bytes did not hold a storage")
    return obj


def read_torch_file(path: str) -> Any:
    """Reads a file written by ``torch.save`` without torch; tensors become numpy arrays."""
    with _open(path) as file:
        head = file.read(4)
        file.seek(0)
        with _as_user_error(path):
            if head[:2] == b"PK":
                return _read_torch_zip(file, path)
            return _read_torch_legacy(file, path)


def read_pickle(path: str) -> Any:
    """Reads a plain pickle (detectron2 / Caffe2 ``.pkl``, Python 2 or 3) with the restricted unpickler."""
    with _open(path) as file, _as_user_error(path):
        return _materialize(_unpickle(file, path, encoding="latin1"))


# ----------------------------------------------------------------------------------------------------
# Files and errors
# ----------------------------------------------------------------------------------------------------


def _open(path: str) -> IO[bytes]:
    """Opens a checkpoint file, with a UserError for a missing path or a directory."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a checkpoint file")
    if not os.path.exists(path):
        raise UserError(f"{path}: checkpoint file not found")
    try:
        return open(path, "rb")
    except OSError as err:
        raise UserError(f"{path}: cannot open the checkpoint file ({err.strerror})") from err


@contextlib.contextmanager
def _as_user_error(path: str) -> Iterator[None]:
    """Turns the parse errors of a truncated or corrupt file into one UserError naming it."""
    try:
        yield
    except UserError:
        raise
    except _CORRUPT_ERRORS as err:
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise UserError(f"{path}: truncated or corrupt checkpoint file ({detail})") from err


# ----------------------------------------------------------------------------------------------------
# detectron2's loading rules
# ----------------------------------------------------------------------------------------------------


def _state_dict(obj: Any, path: str, what: str) -> dict[str, np.ndarray]:
    """Checks that ``obj`` is a dict of str -> array (numpy scalars become 0-d arrays)."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: {what} is a {type(obj).__name__}, not a dict of arrays")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise UserError(
                f"{path}: {what} is not a dict of arrays: entry {key!r} is a {type(value).__name__}"
            )
        out[key] = value
    return out


def _strip_prefix(state: dict[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
    """Removes ``prefix`` when every key carries it, as fvcore does for DataParallel checkpoints."""
    if not state or not all(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix) :]: v for k, v in state.items()}


def _from_pkl(path: str) -> dict[str, Any]:
    """The detectron2 rules for ``.pkl``: d2 format as is, anything else Caffe2 blobs renamed."""
    data = read_pickle(path)
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: holds a {type(data).__name__}, not a dict of arrays")
    if "model" in data and "__author__" in data:
        return {
            "model": _state_dict(data["model"], path, "'model'"),
            "__author__": data["__author__"],
            "matching_heuristics": bool(data.get("matching_heuristics", False)),
        }
    blobs = data["blobs"] if "blobs" in data else data
    what = "'blobs'" if "blobs" in data else "the pickled object"
    blobs = {k: v for k, v in _state_dict(blobs, path, what).items() if not k.endswith("_momentum")}
    model = convert_c2_names(blobs, source=path)
    return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}


def _from_pyth(path: str) -> dict[str, Any]:
    """pycls ``.pyth``: ``model_state`` without ``num_batches_tracked``."""
    data = read_torch_file(path)
    if not isinstance(data, Mapping) or "model_state" not in data:
        raise UserError(f"{path}: a .pyth (pycls) checkpoint must hold 'model_state'")
    state = _state_dict(data["model_state"], path, "'model_state'")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return {"model": state, "__author__": "pycls", "matching_heuristics": True}


def _from_torch(path: str, heuristics: bool) -> dict[str, Any]:
    """A ``torch.save`` file: its ``"model"`` entry, or the whole object as the state dict."""
    data = read_torch_file(path)
    if isinstance(data, Mapping) and "model" in data:
        author = data.get("__author__")
        return {
            "model": _state_dict(data["model"], path, "'model'"),
            "__author__": author if isinstance(author, str) else None,
            "matching_heuristics": heuristics or bool(data.get("matching_heuristics", False)),
        }
    return {"model": _state_dict(data, path, "the saved object"), "__author__": None,
            "matching_heuristics": heuristics}  # fmt: skip


def _split_query(path: str) -> tuple[str, bool]:
    """Splits detectron2's ``file?matching_heuristics=True`` suffix off a path that does not exist."""
    if "?" not in path or os.path.exists(path):
        return path, False
    base, query = path.rsplit("?", 1)
    return base, parse_qs(query).get("matching_heuristics") == ["True"]


def read_checkpoint(path: str) -> dict[str, Any]:
    """Reads a checkpoint file the way detectron2's ``DetectionCheckpointer`` does, without torch.

    Returns ``{"model": {name: np.ndarray}, "__author__": str | None, "matching_heuristics": bool}``;
    the rules per extension are in the module docstring. Raises UserError, naming the file, for a
    missing file, a directory, an unknown extension, a truncated or corrupt file, a refused pickle
    global, or an object that is not a dict of arrays.
    """
    path, heuristics = _split_query(os.fspath(path))
    lower = path.lower()
    if lower.endswith(".pkl"):
        result = _from_pkl(path)
    elif lower.endswith(".pyth"):
        result = _from_pyth(path)
    elif lower.endswith(TORCH_SUFFIXES):
        result = _from_torch(path, heuristics)
    else:
        _open(path).close()  # a missing file or a directory is reported as such first
        known = ", ".join((".pkl", ".pyth") + TORCH_SUFFIXES)
        raise UserError(f"{path}: unknown checkpoint extension; expected one of {known}")
    result["model"] = _strip_prefix(result["model"])
    result["matching_heuristics"] = result["matching_heuristics"] or heuristics
    return result
