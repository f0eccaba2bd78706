"""Page-aligned buffers (egosynth/buffers.py): the frame copies' destinations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from egosynth.buffers import PAGE, BufferPool, empty_aligned

DTYPES = st.sampled_from([np.uint8, np.uint16, np.float16, np.float32, np.float64, np.int32])


@given(shape=st.lists(st.integers(0, 40), min_size=1, max_size=4), dtype=DTYPES)
def test_empty_aligned_is_a_page_aligned_c_contiguous_array(shape: list[int], dtype) -> None:
    a = empty_aligned(tuple(shape), dtype)
    assert a.shape == tuple(shape) and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    if a.size:
        assert a.ctypes.data % PAGE == 0
        a[...] = 7  # the whole of it is usable memory
        assert (a == 7).all()


def test_the_loaders_image_batches_start_on_a_page(tmp_path: Path) -> None:
    from egosynth.data import WindowLoader
    from egosynth.data.synthetic import write_store

    store = tmp_path / "s.zarr"
    write_store(store, [9, 12], height=4, width=6, chunk_frames=4)
    for eyes in ((0, 1), (1,)):
        loader = WindowLoader(store, length=3, stride=2, batch_size=2, eyes=eyes,
                              fields=("rgb", "depth"))  # fmt: skip
        for batch in loader:
            for name in ("rgb", "depth"):
                assert batch[name].ctypes.data % PAGE == 0, name  # rgb: a transposed view


OPS = st.lists(
    st.tuples(st.sampled_from(["take", "drop", "tensor", "view"]), st.integers(0, 7)),
    max_size=40,
)


@given(ops=OPS, keep=st.integers(0, 3))
def test_a_pool_never_hands_out_memory_someone_still_holds(ops, keep: int) -> None:
    """Each array taken is stamped with its own number; whatever still holds it (the array,
    a view of it, a torch tensor made from it) keeps reading that number, whatever is taken
    after. Dropped arrays' memory is handed out again."""
    import torch

    pool = BufferPool(keep=keep)
    held: list[tuple[int, object]] = []  # (stamp, array or view or tensor)
    stamp = 0
    for op, i in ops:
        if op == "take":
            stamp += 1
            a = pool.take((3, 5), np.int64)
            assert a.ctypes.data % PAGE == 0 and a.flags.c_contiguous
            a[...] = stamp
            held.append((stamp, a))
        elif held:
            k = i % len(held)
            s, obj = held.pop(k)
            if op == "tensor":
                held.append((s, torch.from_numpy(np.asarray(obj)[1:])))  # the array dropped
            elif op == "view":
                held.append((s, np.asarray(obj).T[::2]))
        for s, obj in held:
            assert (np.asarray(obj) == s).all()


def test_a_pool_reuses_the_memory_of_dropped_arrays() -> None:
    pool = BufferPool(keep=2)
    a = pool.take((1000,), np.uint8)
    where = a.ctypes.data
    b = pool.take((1000,), np.uint8)
    assert b.ctypes.data != where
    del a
    assert pool.take((1000,), np.uint8).ctypes.data == where  # taken and dropped at once
    assert pool.take((10, 100), np.uint8).ctypes.data == where  # same size, any shape
