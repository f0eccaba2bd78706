"""Page-aligned buffers (egosynth/buffers.py): the frame copies' destinations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from egosynth.buffers import PAGE, empty_aligned

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
