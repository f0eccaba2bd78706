"""ClickMe readers and writers without TensorFlow (egosynth.eval.clickme)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.errors import EgosynthError
from egosynth.eval import clickme as C
from egosynth.eval import metrics as M


def _sample(seed: int, label: int, size: int = 256) -> C.ClickMeSample:
    """A smooth image and a blob heatmap (JPEG-friendly, so the round trip is close)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    phase = rng.uniform(0, 6, 3)
    image = 128 + 100 * np.sin(xx[..., None] / 23.0 + phase) * np.cos(yy / 31.0)[..., None]
    cy, cx = rng.uniform(size // 6, size - size // 6, 2)
    heatmap = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 900.0)
    return C.ClickMeSample(image.clip(0, 255).astype(np.uint8), heatmap.astype(np.uint8), label)


SAMPLES_LABELS = [0, 999, 7, 2**40, -3]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("clickme") / "val-0.tfrecords"
    samples = [_sample(i, label) for i, label in enumerate(SAMPLES_LABELS)]
    assert C.write_clickme_tfrecord(path, samples) == len(samples)
    return path, samples


def _one_line_error(excinfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# --------------------------------------------------------------------------- round trips
def test_tfrecord_in_clickme_format_reads_back_identically(shard):
    path, samples = shard
    records = list(C.read_clickme_records(path))
    assert [r.label for r in records] == SAMPLES_LABELS
    for record, sample in zip(records, samples, strict=True):
        assert record.image_jpeg == C.encode_jpeg(sample.image)
        assert record.heatmap_jpeg == C.encode_jpeg(sample.heatmap)
    decoded = list(C.read_clickme_tfrecord(path))
    for index, (got, record, sample) in enumerate(zip(decoded, records, samples, strict=True)):
        assert got.image.shape == (256, 256, 3) and got.image.dtype == np.uint8
        assert got.heatmap.shape == (256, 256) and got.heatmap.dtype == np.uint8
        np.testing.assert_array_equal(got.image, C.decode_jpeg(record.image_jpeg, 3, "x"))
        # JPEG at quality 95 on smooth content: close to what was written.
        assert np.abs(got.image.astype(int) - sample.image).mean() < 2.0
        assert np.abs(got.heatmap.astype(int) - sample.heatmap).max() <= 8
        assert got.label == sample.label and got.source.endswith(f"record {index}")


def test_independent_tfrecord_package_reads_our_shard(shard):
    from tfrecord.reader import tfrecord_loader

    path, _ = shard
    ours = list(C.read_clickme_records(path))
    theirs = list(
        tfrecord_loader(str(path), None, {"image": "byte", "heatmap": "byte", "label": "int"})
    )
    assert len(theirs) == len(ours)
    for mine, other in zip(ours, theirs, strict=True):
        assert bytes(other["image"]) == mine.image_jpeg
        assert bytes(other["heatmap"]) == mine.heatmap_jpeg
        assert other["label"].tolist() == [mine.label]


def test_we_read_a_shard_written_by_the_tfrecord_package(tmp_path):
    from tfrecord.writer import TFRecordWriter

    path = tmp_path / "theirs.tfrecords"
    samples = [_sample(10 + i, 100 + i) for i in range(3)]
    writer = TFRecordWriter(str(path))
    for s in samples:
        writer.write(
            {
                "image": (C.encode_jpeg(s.image), "byte"),
                "heatmap": (C.encode_jpeg(s.heatmap), "byte"),
                "label": (s.label, "int"),
            }
        )
    writer.close()
    back = list(C.read_clickme_tfrecord(path))
    assert [b.label for b in back] == [100, 101, 102]
    for got, s in zip(back, samples, strict=True):
        expected = C.decode_jpeg(C.encode_jpeg(s.heatmap), 1, "")[..., 0]
        np.testing.assert_array_equal(got.heatmap, expected)


def test_gzip_shard_is_read(tmp_path, shard):
    path, _ = shard
    gz = tmp_path / "val-0-gz.tfrecords"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert [s.label for s in C.read_clickme_tfrecord(gz)] == SAMPLES_LABELS
    assert C.count_clickme_samples(gz) == len(SAMPLES_LABELS)


feature_values = st.one_of(
    st.lists(st.binary(max_size=40), max_size=4),
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6),
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=6),
)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), feature_values, max_size=5))
def test_example_encoding_round_trips(features):
    decoded = C.decode_example(C.encode_example(features))
    assert set(decoded) == set(features)
    for key, value in features.items():
        assert decoded[key] == list(value)


def test_example_encoding_matches_protobuf(tmp_path):
    from tfrecord import example_pb2

    data = C.encode_example({"image": b"\xff\xd8abc", "label": [3, -1], "f": [0.5, 2.0]})
    parsed = example_pb2.Example()
    parsed.ParseFromString(data)
    feature = parsed.features.feature
    assert feature["image"].bytes_list.value == [b"\xff\xd8abc"]
    assert list(feature["label"].int64_list.value) == [3, -1]
    assert list(feature["f"].float_list.value) == [0.5, 2.0]
    # Deterministic protobuf serialisation (sorted map keys, packed lists) gives our bytes.
    assert parsed.SerializeToString(deterministic=True) == data
    # And we parse protobuf's own (unpacked-capable) output.
    assert C.decode_example(parsed.SerializeToString())["label"] == [3, -1]


def test_npz_round_trip_keeps_float_heatmaps(tmp_path):
    sample = _sample(3, 42, size=64)
    heatmap = sample.heatmap.astype(np.float32) / 7.0
    path = C.write_clickme_npz(
        tmp_path / "img_0001.npz", C.ClickMeSample(sample.image, heatmap, 42)
    )
    back = C.read_clickme_npz(path)
    np.testing.assert_array_equal(back.image, sample.image)
    np.testing.assert_array_equal(back.heatmap, heatmap)
    assert back.label == 42 and back.source == str(path)
    assert not list(tmp_path.glob("*.partial*"))


def test_batches_mirror_the_reference_preprocessing(shard, tmp_path):
    path, _ = shard
    batches = list(C.iter_clickme_batches(path, batch_size=2))
    assert [len(b.labels) for b in batches] == [2, 2, 1]  # the remainder is kept
    decoded = list(C.read_clickme_tfrecord(path))
    first = batches[0]
    assert first.images.shape == (2, 224, 224, 3) and first.heatmaps.shape == (2, 224, 224)
    np.testing.assert_array_equal(
        first.heatmaps, M.preprocess_clickme_heatmaps(np.stack([d.heatmap for d in decoded[:2]]))
    )
    np.testing.assert_array_equal(
        first.images, M.preprocess_clickme_images(np.stack([d.image for d in decoded[:2]]))
    )
    assert np.concatenate([b.labels for b in batches]).tolist() == SAMPLES_LABELS


def test_folder_discovery_mixes_shards_and_npz(shard, tmp_path):
    path, _ = shard
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.tfrecords").write_bytes(path.read_bytes())
    C.write_clickme_npz(folder / "b.npz", _sample(9, 5))
    (folder / "c.tfrecords.partial").write_bytes(b"junk")  # an interrupted write is ignored
    (folder / "notes.txt").write_text("ignored")
    files = C.find_clickme_files(folder)
    assert [f.name for f in files] == ["a.tfrecords", "b.npz"]
    assert [s.label for s in C.iter_clickme(folder)] == [*SAMPLES_LABELS, 5]
    assert C.count_clickme_samples(folder) == len(SAMPLES_LABELS) + 1


# --------------------------------------------------------------------------- errors
def test_corrupt_record_names_the_file_and_record(shard, tmp_path):
    path, _ = shard
    data = bytearray(path.read_bytes())
    (first_len,) = struct.unpack("<Q", data[:8])
    data[16 + first_len + 12 + 40] ^= 0xFF  # a byte inside record 1's payload
    bad = tmp_path / "bad.tfrecords"
    bad.write_bytes(bytes(data))
    with pytest.raises(EgosynthError) as excinfo:
        list(C.read_clickme_tfrecord(bad))
    _one_line_error(excinfo, str(bad), "record 1", f"byte {16 + first_len}", "CRC")


def test_truncated_and_foreign_files_give_one_line_errors(shard, tmp_path):
    path, _ = shard
    truncated = tmp_path / "truncated.tfrecords"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(EgosynthError) as excinfo:
        list(C.iter_tfrecord(truncated))
    _one_line_error(excinfo, str(truncated), "record 4", "truncated")
    foreign = tmp_path / "foreign.tfrecords"
    foreign.write_bytes(b"this is not a tfrecord file at all")
    with pytest.raises(EgosynthError) as excinfo:
        list(C.iter_tfrecord(foreign))
    _one_line_error(excinfo, str(foreign), "record 0", "not a TFRecord")


def _write_one(tmp_path, name: str, features: dict) -> str:
    path = tmp_path / name
    C.write_tfrecord(path, [C.encode_example(features)])
    return str(path)


def test_malformed_examples_name_the_feature(tmp_path):
    good = _sample(1, 3)
    image_jpeg, heat_jpeg = C.encode_jpeg(good.image), C.encode_jpeg(good.heatmap)
    cases = {
        "nolabel": ({"image": image_jpeg, "heatmap": heat_jpeg}, ["'label' is missing"]),
        "rgbheat": (
            {"image": image_jpeg, "heatmap": C.encode_jpeg(good.image), "label": 1},
            ["feature 'heatmap'", "3 channel", "expected 1"],
        ),
        "notjpeg": (
            {"image": b"PNG?", "heatmap": heat_jpeg, "label": 1},
            ["feature 'image'", "not a JPEG"],
        ),
        "small": (
            {"image": C.encode_jpeg(good.image[:128, :128]), "heatmap": heat_jpeg, "label": 1},
            ["feature 'image'", "128x128", "256x256"],
        ),
        "twolabels": (
            {"image": image_jpeg, "heatmap": heat_jpeg, "label": [1, 2]},
            ["'label'", "2 value(s)"],
        ),
        "floatlabel": (
            {"image": image_jpeg, "heatmap": heat_jpeg, "label": 1.0},
            ["'label'", "one int"],
        ),
    }
    for name, (features, needles) in cases.items():
        path = _write_one(tmp_path, f"{name}.tfrecords", features)
        with pytest.raises(EgosynthError) as excinfo:
            list(C.read_clickme_tfrecord(path))
        _one_line_error(excinfo, path, "record 0", *needles)
    garbage = tmp_path / "garbage.tfrecords"
    C.write_tfrecord(garbage, [b"\x0a\xff\xff"])
    with pytest.raises(EgosynthError) as excinfo:
        list(C.read_clickme_tfrecord(garbage))
    _one_line_error(excinfo, str(garbage), "not a tf.train.Example")


def test_npz_errors_name_file_and_array(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    cases = {
        "nokey.npz": (dict(image=img, label=np.int64(1)), "'heatmap' is missing"),
        "dtype.npz": (
            dict(image=img.astype(np.float32), heatmap=np.zeros((8, 8)), label=1),
            "image = float32",
        ),
        "shape.npz": (dict(image=img, heatmap=np.zeros((4, 8)), label=1), "heatmap = float64"),
        "label.npz": (
            dict(image=img, heatmap=np.zeros((8, 8)), label=np.array([1, 2])),
            "label = int64",
        ),
        "nan.npz": (dict(image=img, heatmap=np.full((8, 8), np.nan), label=1), "non-finite"),
        "pickle.npz": (
            dict(image=img, heatmap=np.zeros((8, 8)), label=np.array([{"x": 1}], dtype=object)),
            "not a readable npz",
        ),
    }
    for name, (arrays, needle) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(EgosynthError) as excinfo:
            C.read_clickme_npz(tmp_path / name)
        _one_line_error(excinfo, str(tmp_path / name), needle)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(EgosynthError) as excinfo:
        C.find_clickme_files(tmp_path / "nowhere")
    _one_line_error(excinfo, "nowhere", "not found")
    with pytest.raises(EgosynthError) as excinfo:
        C.find_clickme_files(tmp_path)
    _one_line_error(excinfo, str(tmp_path), "no ClickMe files")
    with pytest.raises(EgosynthError) as excinfo:
        list(C.iter_tfrecord(tmp_path / "gone.tfrecords"))
    _one_line_error(excinfo, "gone.tfrecords", "not found")
