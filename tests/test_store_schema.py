"""The store's schema module (egosynth.store.schema): light to import, one source of the
names, and typed clip metadata and label tables that round-trip what the store records."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _fake_renderer import FakeRenderer, tiny_set

from egosynth.errors import EgosynthError
from egosynth.labels import Label
from egosynth.store.schema import (
    ARRAY_NAMES,
    CLIP_ARRAYS,
    EYED_FRAME_ARRAYS,
    FRAME_ARRAYS,
    IMAGE_ARRAYS,
    META_ARRAYS,
    ClipMeta,
    LabelTable,
    array_dtype,
    array_shape,
)


def _run(code: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_schema_imports_neither_zarr_nor_torch_and_the_switch_is_read_from_the_env() -> None:
    code = (
        "import sys, egosynth.store.schema, egosynth.store\n"
        "from egosynth.store import ARRAY_NAMES, ClipMeta\n"
        "heavy = [m for m in ('zarr', 'torch', 'numcodecs', 'ray') if m in sys.modules]\n"
        "import egosynth.store._fast as f\n"
        "print(heavy, f.enabled())"
    )
    assert _run(code) == "[] True"
    for off in ("0", "off"):
        assert _run(code, EGOSYNTH_STORE_FAST=off) == "[] False"


def test_the_loader_takes_its_field_names_from_the_schema() -> None:
    from egosynth.data import reader

    assert reader.ALL_FIELDS == ARRAY_NAMES == (*FRAME_ARRAYS, *CLIP_ARRAYS)
    assert reader.IMAGE_FIELDS == tuple(IMAGE_ARRAYS)
    assert reader.FRAME_FIELDS == (*IMAGE_ARRAYS, *META_ARRAYS)
    assert reader.EYED_FRAME_FIELDS == EYED_FRAME_ARRAYS == (*IMAGE_ARRAYS, "cam_to_world")
    assert reader.CLIP_FIELDS == CLIP_ARRAYS == ("intrinsics",)
    assert array_shape("rgb", 5, 3, 4) == (5, 2, 3, 4, 3) and array_dtype("depth") == "float16"
    assert array_shape("cam_to_world", 5, 3, 4) == (5, 2, 4, 4)
    assert array_shape("intrinsics", 5, 3, 4) == (2, 3, 3)


def test_label_table_round_trips() -> None:
    labels = (
        Label(1, "box_0", "box"),
        Label(2, "dog_0", "dog", {3: "torso", 4: "head"}, diagnostic_part="head"),
    )
    table = LabelTable(labels)
    data = table.to_json()
    assert data[0] == {"instance_id": 1, "name": "box_0", "category": "box", "parts": {}}
    assert data[1]["parts"] == {"3": "torso", "4": "head"} and data[1]["diagnostic_part"] == "head"
    assert LabelTable.from_json(data) == table
    assert LabelTable.from_json(data).to_json() == data
    assert table.categories == ["box", "dog"] and table.category_of() == {1: "box", 2: "dog"}
    assert LabelTable.from_json(None) == LabelTable()
    with pytest.raises(EgosynthError, match=r"clip c: labels\[0\] = .*needs instance_id"):
        LabelTable.from_json([{"name": "x"}], "clip c")
    with pytest.raises(EgosynthError, match="not a list"):
        LabelTable.from_json({"a": 1}, "clip c")


def test_clip_meta_round_trips_what_the_writer_records(tmp_path) -> None:
    from egosynth.config import load_scene_set
    from egosynth.plan import plan_clips
    from egosynth.render_clip import config_fingerprint, render_clip, store_attrs
    from egosynth.store import ClipStore, finalize_store, prepare_store

    sset = load_scene_set(tiny_set(tmp_path))
    path = tmp_path / "s.zarr"
    prepare_store(path, config_fingerprint(sset), store_attrs(sset))
    plan = plan_clips(sset)[0]
    render_clip(sset, plan, path, FakeRenderer(), chunk_frames=4)
    finalize_store(path, [plan.clip_id])
    clip = ClipStore(path).clip(plan.clip_id)
    meta = clip.meta
    assert ClipMeta.from_attrs(meta.to_attrs()) == meta
    assert meta.to_attrs() == clip.attrs
    assert meta.complete and meta.scene == plan.scene and meta.n_frames == clip.n_frames
    assert meta.sparse == ("instance", "part") and meta.seed == str(plan.seed)
    assert meta.label_table.to_json() == clip.attrs["labels"] == clip.labels.to_json()
    assert [lab.category for lab in meta.label_table] == ["box", "dog"]
    # An attr egosynth does not know survives; an old clip without sparse_arrays: all sparse.
    old = {k: v for k, v in clip.attrs.items() if k != "sparse_arrays"} | {"note": 1}
    back = ClipMeta.from_attrs(old)
    assert back.to_attrs() == old and back.extra == {"note": 1}
    assert back.sparse == ARRAY_NAMES
    for key, value, why in (
        ("n_frames", 0, "not an integer >= 1"),
        ("height", "4", "not an integer >= 1"),
        ("fps", None, "not a number"),
        ("chunk_frames", 2.5, "not an integer"),
        ("sparse_arrays", "rgb", "not a list"),
    ):
        with pytest.raises(EgosynthError, match=rf"clip {plan.clip_id}: attr {key} = .*{why}"):
            ClipMeta.from_attrs({**clip.attrs, key: value})
