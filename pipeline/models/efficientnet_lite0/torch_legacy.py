"""Read legacy (non-zip, PyTorch < 1.6) ``.pth`` state dicts without importing torch.

Layout written by ``torch.save(obj, f, _use_new_zipfile_serialization=False)``:

1. pickle: magic number ``0x1950a86a20f9469cfc6c``
2. pickle: protocol version ``1001``
3. pickle: sys-info dict (endianness, C type sizes)
4. pickle: the object; every tensor is ``torch._utils._rebuild_tensor_v2(storage, ...)``
   where ``storage`` is a persistent id ``('storage', StorageType, key, location, numel,
   view_metadata)`` -- the bytes are *not* inside the pickle
5. pickle: list of storage keys, in the order their data follows
6. per key: int64 element count, then ``count * itemsize`` raw bytes

Pickle runs arbitrary callables named in the stream, so the unpickler below is
restricted: ``find_class`` resolves only the few globals this format needs and
refuses everything else with :class:`UnsafePickleError`.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "load_legacy_state_dict"]

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype (little-endian; the sys-info is checked).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafePickleError(ValueError):
    """The pickle referenced a global outside the allow-list (nothing was called)."""


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage (or a slice of one) whose bytes come after the pickle."""

    key: str
    dtype: np.dtype
    offset: int  # in elements, into the root storage (non-zero only for views)
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """Placeholder for a tensor; materialized once the storage bytes are read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor built on {type(storage).__name__}, not on a storage")
    return _TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    # requires_grad / hooks / metadata are autograd state; irrelevant for weights.
    return _rebuild_tensor(storage, storage_offset, size, stride)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise UnsafePickleError(
            f"refusing to unpickle global {module}.{name}: not needed for a state dict"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ValueError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"persistent id has no storage type: {pid!r}")
        if view is not None:  # old storage views: (view_key, offset, size) into root
            _view_key, offset, view_numel = view
            return _StorageRef(str(key), storage_type.dtype, int(offset), int(view_numel))
        return _StorageRef(str(key), storage_type.dtype, 0, int(numel))


def _materialize(name: str, t: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    root = storages[t.storage.key]
    if root.dtype != t.storage.dtype:
        raise ValueError(f"{name}: storage {t.storage.key} is used with two dtypes")
    flat = root[t.storage.offset : t.storage.offset + t.storage.numel]
    if len(t.shape) != len(t.stride) or min(t.shape + t.stride + (t.offset,)) < 0:
        raise ValueError(f"{name}: bad offset/size/stride {t.offset}/{t.shape}/{t.stride}")
    if 0 in t.shape:
        return np.empty(t.shape, dtype=flat.dtype)
    # as_strided does no bounds checking: check the last element it would touch.
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride, strict=False))
    if last >= flat.size:
        raise ValueError(f"{name}: view reaches element {last} of a {flat.size}-element storage")
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :],
        shape=t.shape,
        strides=tuple(s * flat.itemsize for s in t.stride),
        writeable=False,
    )
    return view.copy()  # contiguous, writable, independent of the file buffer


def _load_pickle(f, path: str) -> Any:
    try:
        return _RestrictedUnpickler(f).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except Exception as e:  # malformed pickles raise many types (EOFError, KeyError, ...)
        raise ValueError(f"{path}: truncated or not a legacy torch file ({e!r})") from None


def load_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a legacy-format PyTorch state dict as ``{name: numpy array}`` (torch-free)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise ValueError(f"{path}: zip-format checkpoint (torch >= 1.6), not legacy format")
        f.seek(0)
        obj, keys = _read_header_pickles(f, path)
        dtypes = {t.storage.key: t.storage.dtype for t in obj.values()}
        storages = _read_storages(f, path, keys, dtypes)
    missing = set(dtypes) - set(storages)
    if missing:
        raise ValueError(f"{path}: no data for storages {sorted(missing)}")
    try:
        return {name: _materialize(name, t, storages) for name, t in obj.items()}
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _read_header_pickles(f, path: str) -> tuple[dict, list]:
    """Five pickles back to back (each load() stops right after its STOP opcode): magic,
    protocol, system info, the state dict of tensor references, the storage keys."""
    if _load_pickle(f, path) != _MAGIC:
        raise ValueError(f"{path}: not a legacy torch file (wrong magic number)")
    if _load_pickle(f, path) != _PROTOCOL_VERSION:
        raise ValueError(f"{path}: unsupported legacy protocol version")
    sys_info = _load_pickle(f, path)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
        raise ValueError(f"{path}: only little-endian files are supported")
    obj = _load_pickle(f, path)
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorRef) for k, v in obj.items()
    ):
        raise ValueError(f"{path}: expected a state dict of {{name: tensor}}")
    keys = _load_pickle(f, path)
    if not isinstance(keys, list):
        raise ValueError(f"{path}: expected the list of storage keys")
    return obj, keys


def _read_storages(f, path: str, keys: list, dtypes: dict) -> dict[str, np.ndarray]:
    """The raw storages after the pickles: per key, an int64 element count, then the data."""
    storages: dict[str, np.ndarray] = {}
    for key in map(str, keys):
        if key not in dtypes:  # its element size would be unknown
            raise ValueError(f"{path}: storage {key} is not used by any tensor")
        header = f.read(8)
        if len(header) != 8:
            raise ValueError(f"{path}: truncated before storage {key}")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * dtypes[key].itemsize
        data = f.read(nbytes) if numel >= 0 else b""
        if numel < 0 or len(data) != nbytes:
            raise ValueError(f"{path}: truncated in storage {key}")
        storages[key] = np.frombuffer(data, dtype=dtypes[key])
    return storages
