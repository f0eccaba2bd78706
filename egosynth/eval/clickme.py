"""ClickMe data without TensorFlow: TFRecord shards and per-image npz files, read and written.

TFRecord framing (one record): uint64 length, masked crc32c of the length, the bytes, masked
crc32c of the bytes, all little-endian. Each record is a serialised `tf.train.Example` with the
features the reference reads (serre-lab/Harmonization, clickme_dataset.py L15-19):

    image    bytes_list  JPEG, 256x256, 3 channels
    heatmap  bytes_list  JPEG, 256x256, 1 channel (grayscale)
    label    int64_list  ImageNet class index

The Example protobuf is decoded by the small wire-format parser below (no protobuf or TF
dependency). JPEGs are decoded with libjpeg-turbo's fast integer DCT and fancy upsampling
(simplejpeg), which is what `tf.io.decode_jpeg` does by default, so pixels match TF's bit for
bit; Pillow's default (accurate) DCT differs from TF by up to a few grey levels.

The npz layout (ours; ClickMe itself ships TFRecords) is one file per image with arrays
`image` (H, W, 3) uint8, `heatmap` (H, W) or (H, W, 1) any real dtype, `label` (integer
scalar). Loaded with allow_pickle=False: a data file never executes code.

numpy + stdlib + crc32c + simplejpeg only.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from egosynth.errors import EgosynthError
from egosynth.eval import metrics

TFRECORD_SUFFIXES = (".tfrecords", ".tfrecord")
NPZ_SUFFIX = ".npz"
CLICKME_FEATURES = ("image", "heatmap", "label")
CLICKME_SIZE = metrics.CLICKME_SIZE
# tf.io.encode_jpeg's defaults: quality 95, 4:2:0 chroma subsampling, accurate DCT.
DEFAULT_JPEG_QUALITY = 95

FeatureValue = bytes | int | float | Sequence[bytes] | Sequence[int] | Sequence[float]


# =========================================================================== TFRecord framing
def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C: rotate right by 15 and add a constant (mod 2**32)."""
    import crc32c

    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _open_maybe_gzip(path: Path) -> BinaryIO:
    """Open a TFRecord file; GZIP-compressed shards (TF's 'GZIP' option) are detected."""
    from egosynth.readers import check_regular

    if check_regular(path, "ClickMe file").st_size == 0:
        raise EgosynthError(f"{path}: ClickMe file is empty")
    handle = open(path, "rb")  # returned to the caller, who closes it
    magic = handle.read(2)
    handle.seek(0)
    if magic == b"\x1f\x8b":
        handle.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return handle


def iter_tfrecord(path: str | Path) -> Iterator[bytes]:
    """Yield the records of a TFRecord file, checking both CRCs of every record.

    Raises EgosynthError naming the file, the record index and its byte offset when the file
    is missing, truncated or corrupt.
    """
    path = Path(path)
    index, offset = 0, 0
    with _open_maybe_gzip(path) as handle:
        while True:
            header = _read(handle, 12, path)
            if not header:
                return
            where = f"{path}: record {index} at byte {offset}"
            if len(header) < 12:
                raise EgosynthError(f"{where}: truncated record header ({len(header)} of 12 bytes)")
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if _masked_crc(header[:8]) != length_crc:
                raise EgosynthError(f"{where}: length CRC mismatch: not a TFRecord file or corrupt")
            if length > _MAX_RECORD_BYTES:
                raise EgosynthError(f"{where}: record length {length} is not plausible: corrupt")
            data = _read(handle, length, path)
            footer = _read(handle, 4, path)
            if len(data) < length or len(footer) < 4:
                raise EgosynthError(f"{where}: truncated record (length field says {length} bytes)")
            if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise EgosynthError(f"{where}: data CRC mismatch: the record is corrupt")
            yield data
            index += 1
            offset += 16 + length


_MAX_RECORD_BYTES = 1 << 30


def _read(handle: BinaryIO, n: int, path: Path) -> bytes:
    """`handle.read(n)`, a damaged GZIP stream becoming one line naming the file."""
    import zlib

    try:
        return handle.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise EgosynthError(f"{path}: damaged GZIP TFRecord file ({exc})") from None


def _frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + record
        + struct.pack("<I", _masked_crc(record))
    )


def write_tfrecord(path: str | Path, records: Iterable[bytes]) -> int:
    """Write records to an uncompressed TFRecord file (atomically); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    with open(tmp, "wb") as handle:
        for record in records:
            handle.write(_frame(bytes(record)))
            count += 1
    tmp.replace(path)
    return count


# =========================================================================== Example protobuf
class ProtobufError(ValueError):
    """The bytes are not a well-formed tf.train.Example."""


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) for each field of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ProtobufError("truncated 64-bit field")
            yield number, wire, buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise ProtobufError("length-delimited field runs past the end")
            yield number, wire, buf[pos : pos + size]
            pos += size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ProtobufError("truncated 32-bit field")
            yield number, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


def _to_int64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_feature(buf: bytes) -> list[bytes] | list[int] | list[float]:
    """Feature { oneof: BytesList bytes_list = 1; FloatList = 2; Int64List = 3 }."""
    result: list = []
    for number, wire, value in _fields(buf):
        if wire != 2 or number not in (1, 2, 3):
            continue  # unknown field: skipped, as protobuf parsers do
        assert isinstance(value, bytes)
        result = []  # a later oneof member replaces an earlier one
        for inner_number, inner_wire, item in _fields(value):
            if inner_number != 1:
                continue
            if number == 1 and inner_wire == 2:
                result.append(bytes(item))  # type: ignore[arg-type]
            elif number == 2 and inner_wire == 5:
                result.append(struct.unpack("<f", item)[0])  # type: ignore[arg-type]
            elif number == 2 and inner_wire == 2:  # packed floats
                if len(item) % 4:  # type: ignore[arg-type]
                    raise ProtobufError("packed float list length is not a multiple of 4")
                result.extend(np.frombuffer(item, "<f4").tolist())  # type: ignore[arg-type]
            elif number == 3 and inner_wire == 0:
                result.append(_to_int64(item))  # type: ignore[arg-type]
            elif number == 3 and inner_wire == 2:  # packed varints
                pos = 0
                while pos < len(item):  # type: ignore[arg-type]
                    raw, pos = _read_varint(item, pos)  # type: ignore[arg-type]
                    result.append(_to_int64(raw))
            else:
                raise ProtobufError(f"feature list field has wire type {inner_wire}")
    return result


def decode_example(data: bytes) -> dict[str, list[bytes] | list[int] | list[float]]:
    """Parse a serialised tf.train.Example into {name: list of values}."""
    features: dict[str, list[bytes] | list[int] | list[float]] = {}
    for number, wire, value in _fields(data):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _fields(value):  # type: ignore[arg-type]
            if entry_number != 1 or entry_wire != 2:
                continue
            key, feature = "", b""
            for n, w, v in _fields(entry):  # type: ignore[arg-type]
                if n == 1 and w == 2:
                    key = bytes(v).decode("utf-8")  # type: ignore[arg-type]
                elif n == 2 and w == 2:
                    feature = bytes(v)  # type: ignore[arg-type]
            features[key] = _decode_feature(feature)  # a repeated key: the last one wins
    return features


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> ten-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _encode_feature(name: str, value: FeatureValue) -> bytes:
    items = list(value) if isinstance(value, list | tuple | np.ndarray) else [value]
    if all(isinstance(v, bytes | bytearray) for v in items):
        body = b"".join(_length_delimited(1, bytes(v)) for v in items)
        return _length_delimited(1, body)
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items):
        packed = b"".join(_varint(int(v)) for v in items)
        return _length_delimited(3, _length_delimited(1, packed) if items else b"")
    if all(isinstance(v, float | np.floating) for v in items):
        packed = np.asarray(items, dtype="<f4").tobytes()
        return _length_delimited(2, _length_delimited(1, packed) if items else b"")
    raise TypeError(f"feature {name!r}: values must be all bytes, all ints or all floats")


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialise {name: bytes | int | float | list of one kind} as a tf.train.Example.

    Keys are written sorted and number lists packed, as protobuf's deterministic serialiser
    does, so equal inputs give equal bytes.
    """
    entries = b"".join(
        _length_delimited(
            1,
            _length_delimited(1, name.encode("utf-8"))
            + _length_delimited(2, _encode_feature(name, features[name])),
        )
        for name in sorted(features)
    )
    return _length_delimited(1, entries)


# =========================================================================== JPEG
def _jpeg():
    try:
        import simplejpeg
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EgosynthError(
            "reading ClickMe JPEGs needs simplejpeg: pip install 'egosynth[eval]'"
        ) from exc
    return simplejpeg


def decode_jpeg(data: bytes, channels: int, where: str) -> np.ndarray:
    """Decode JPEG bytes to (H, W, channels) uint8 exactly as tf.io.decode_jpeg does.

    TF's default dct_method "" selects libjpeg's fast integer DCT (JDCT_IFAST) with fancy
    upsampling; so do we. `channels` must match the file's own (TF decodes with channels=0
    and the reference then reshapes, which fails on a mismatch).
    """
    sj = _jpeg()
    try:
        _, _, colorspace, _ = sj.decode_jpeg_header(data)
    except ValueError as exc:
        raise EgosynthError(f"{where}: not a JPEG ({exc})") from None
    space = colorspace.lower()
    stored = 1 if space == "gray" else 3 if space in ("rgb", "ycbcr") else 4
    if stored != channels:
        raise EgosynthError(
            f"{where}: JPEG has {stored} channel(s) ({colorspace}), expected {channels}"
        )
    try:
        image = sj.decode_jpeg(
            data, colorspace="GRAY" if channels == 1 else "RGB", fastdct=True, fastupsample=False
        )
    except ValueError as exc:
        raise EgosynthError(f"{where}: corrupt JPEG ({exc})") from None
    return image.reshape(image.shape[0], image.shape[1], channels)


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Encode (H, W), (H, W, 1) (grayscale) or (H, W, 3) uint8 as JPEG like tf.io.encode_jpeg."""
    sj = _jpeg()
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_jpeg needs uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"encode_jpeg needs (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
    gray = arr.shape[-1] == 1
    return sj.encode_jpeg(
        np.ascontiguousarray(arr),
        quality=int(quality),
        colorspace="GRAY" if gray else "RGB",
        colorsubsampling="Gray" if gray else "420",
        fastdct=False,
    )


# =========================================================================== ClickMe samples
@dataclass(eq=False)  # arrays: compare fields explicitly
class ClickMeSample:
    """One ClickMe image: uint8 image (H, W, 3), heatmap (H, W), ImageNet label."""

    image: np.ndarray
    heatmap: np.ndarray
    label: int
    source: str = ""


def _feature(features: Mapping, name: str, kind: type, where: str):
    if name not in features:
        raise EgosynthError(f"{where}: feature {name!r} is missing (has {sorted(features)})")
    values = features[name]
    if len(values) != 1 or not isinstance(values[0], kind):
        shown = type(values[0]).__name__ if values else "nothing"
        raise EgosynthError(
            f"{where}: feature {name!r} must hold one {kind.__name__}, "
            f"got {len(values)} value(s) of {shown}"
        )
    return values[0]


@dataclass
class ClickMeRecord:
    """One ClickMe Example before decoding: the two JPEG byte strings and the label."""

    image_jpeg: bytes
    heatmap_jpeg: bytes
    label: int


def parse_clickme_example(record: bytes, where: str) -> ClickMeRecord:
    """A serialised ClickMe Example -> its raw features (JPEGs left encoded).

    Unlike the reference, a missing feature is an error rather than its default ('' / 0): a
    silent label 0 would score the wrong class.
    """
    try:
        features = decode_example(record)
    except ProtobufError as exc:
        raise EgosynthError(f"{where}: not a tf.train.Example ({exc})") from None
    return ClickMeRecord(
        image_jpeg=_feature(features, "image", bytes, where),
        heatmap_jpeg=_feature(features, "heatmap", bytes, where),
        label=int(_feature(features, "label", int, where)),
    )


def decode_clickme_record(record: ClickMeRecord, where: str) -> ClickMeSample:
    """Decode both JPEGs (as tf.io.decode_jpeg does) and check ClickMe's 256x256 size."""
    image = decode_jpeg(record.image_jpeg, 3, f"{where}: feature 'image'")
    heatmap = decode_jpeg(record.heatmap_jpeg, 1, f"{where}: feature 'heatmap'")[..., 0]
    for name, arr in (("image", image), ("heatmap", heatmap)):
        if arr.shape[:2] != (CLICKME_SIZE, CLICKME_SIZE):
            raise EgosynthError(
                f"{where}: feature {name!r} is {arr.shape[1]}x{arr.shape[0]}, "
                f"ClickMe needs {CLICKME_SIZE}x{CLICKME_SIZE}"
            )
    return ClickMeSample(image, heatmap, record.label, where)


def read_clickme_records(path: str | Path) -> Iterator[ClickMeRecord]:
    """Yield the raw (undecoded) records of one ClickMe TFRecord shard, in file order."""
    for index, record in enumerate(iter_tfrecord(path)):
        yield parse_clickme_example(record, f"{path}: record {index}")


def read_clickme_tfrecord(path: str | Path) -> Iterator[ClickMeSample]:
    """Yield the decoded samples of one ClickMe TFRecord shard, in file order."""
    for index, record in enumerate(iter_tfrecord(path)):
        where = f"{path}: record {index}"
        yield decode_clickme_record(parse_clickme_example(record, where), where)


def clickme_example(sample: ClickMeSample, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """A sample as ClickMe's serialised Example (JPEG image and heatmap, int64 label)."""
    heatmap = np.asarray(sample.heatmap)
    if heatmap.dtype != np.uint8:
        raise ValueError(f"a ClickMe TFRecord heatmap must be uint8, got {heatmap.dtype}")
    return encode_example(
        {
            "image": encode_jpeg(sample.image, quality),
            "heatmap": encode_jpeg(heatmap, quality),
            "label": int(sample.label),
        }
    )


def write_clickme_tfrecord(
    path: str | Path,
    samples: Iterable[ClickMeSample],
    quality: int = DEFAULT_JPEG_QUALITY,
) -> int:
    """Write samples as one ClickMe TFRecord shard (JPEG-encoded); returns the count."""
    return write_tfrecord(path, (clickme_example(s, quality) for s in samples))


def write_clickme_npz(path: str | Path, sample: ClickMeSample) -> Path:
    """Write one sample as an npz file (lossless: the heatmap keeps its dtype)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file handle stops numpy appending ".npz", so a half-written file never looks like data.
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            image=np.asarray(sample.image, dtype=np.uint8),
            heatmap=np.asarray(sample.heatmap),
            label=np.int64(sample.label),
        )
    tmp.replace(path)
    return path


def read_clickme_npz(path: str | Path) -> ClickMeSample:
    """Read one per-image npz file (keys image, heatmap, label), validating shapes and dtypes."""
    from egosynth.readers import check_regular

    path = Path(path)
    check_regular(path, "npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise EgosynthError(f"{path}: not a readable npz file ({exc})") from None
    for key in CLICKME_FEATURES:
        if key not in arrays:
            raise EgosynthError(f"{path}: array {key!r} is missing (has {sorted(arrays)})")
    image, heatmap, label = arrays["image"], arrays["heatmap"], arrays["label"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise EgosynthError(
            f"{path}: image = {image.dtype}{list(image.shape)}: need uint8 (H, W, 3)"
        )
    if heatmap.ndim == 3 and heatmap.shape[-1] == 1:
        heatmap = heatmap[..., 0]
    if heatmap.shape != image.shape[:2] or not np.issubdtype(heatmap.dtype, np.number):
        raise EgosynthError(
            f"{path}: heatmap = {heatmap.dtype}{list(heatmap.shape)}: need a real "
            f"(H, W) = {list(image.shape[:2])} map"
        )
    if not np.all(np.isfinite(heatmap)):
        raise EgosynthError(f"{path}: heatmap has non-finite values")
    if label.shape not in ((), (1,)) or not np.issubdtype(label.dtype, np.integer):
        raise EgosynthError(f"{path}: label = {label.dtype}{list(label.shape)}: need one integer")
    return ClickMeSample(image, heatmap, int(label.reshape(())), str(path))


# =========================================================================== discovery & batches
def find_clickme_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand files and folders into ClickMe files (*.tfrecords, *.tfrecord, *.npz), sorted.

    A folder contributes its own matching files (not sub-folders). Errors name the path.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            matches = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and (p.suffix in TFRECORD_SUFFIXES or p.suffix == NPZ_SUFFIX)
            )
            if not matches:
                raise EgosynthError(f"{path}: no ClickMe files (*.tfrecords, *.npz) in this folder")
            found.extend(matches)
        elif path.exists() or path.is_symlink():
            from egosynth.readers import check_regular

            check_regular(path, "ClickMe file")  # a FIFO, a device, a symlink loop: named
            found.append(path)
        else:
            raise EgosynthError(f"{path}: ClickMe data not found (download it first)")
    if not found:
        raise EgosynthError("no ClickMe data given")
    return found


def iter_clickme(paths: str | Path | Sequence[str | Path]) -> Iterator[ClickMeSample]:
    """Every sample of the given files and folders: shards in file order, npz one each."""
    for path in find_clickme_files(paths):
        if path.suffix == NPZ_SUFFIX:
            yield read_clickme_npz(path)
        else:
            yield from read_clickme_tfrecord(path)


def count_clickme_samples(paths: str | Path | Sequence[str | Path]) -> int:
    """How many samples the given files and folders hold (for a progress bar's total).

    Reads only the TFRecord length headers (seeking past the payloads), so it is quick; the
    CRCs are checked later, when the records are read.
    """
    total = 0
    for path in find_clickme_files(paths):
        if path.suffix == NPZ_SUFFIX:
            total += 1
            continue
        with _open_maybe_gzip(path) as handle:
            while len(header := _read(handle, 12, path)) == 12:
                length = struct.unpack("<Q", header[:8])[0]
                if length > _MAX_RECORD_BYTES:
                    break  # garbage: reading the records names the problem
                try:
                    handle.seek(length + 4, 1)
                except (OSError, EOFError, ValueError) as exc:
                    raise EgosynthError(f"{path}: damaged TFRecord file ({exc})") from None
                total += 1
    return total


@dataclass
class ClickMeBatch:
    """A batch as the reference's loader yields it, labels as integers rather than one-hot."""

    images: np.ndarray  # (B, 224, 224, 3) float32, 0..255
    heatmaps: np.ndarray  # (B, 224, 224) float32: resized, blurred, resized human maps
    labels: np.ndarray  # (B,) int64
    sources: list[str]


def iter_clickme_batches(
    paths: str | Path | Sequence[str | Path], batch_size: int = 64
) -> Iterator[ClickMeBatch]:
    """Preprocessed batches (clickme_dataset.py L43-58); the last, smaller batch is kept.

    The reference drops it (drop_remainder=True) after interleaving shards in an order that
    depends on TF's AUTOTUNE, so which images it drops is not reproducible; we score all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pending: list[ClickMeSample] = []
    for sample in iter_clickme(paths):
        pending.append(sample)
        if len(pending) == batch_size:
            yield _make_batch(pending)
            pending = []
    if pending:
        yield _make_batch(pending)


def _make_batch(samples: list[ClickMeSample]) -> ClickMeBatch:
    shapes = {s.image.shape for s in samples}
    if len(shapes) > 1:
        raise EgosynthError(
            f"{samples[-1].source}: image size {samples[-1].image.shape} differs from the rest "
            f"of the batch {sorted(shapes)}"
        )
    images = np.stack([s.image for s in samples])
    heatmaps = np.stack([np.asarray(s.heatmap, dtype=np.float32) for s in samples])
    return ClickMeBatch(
        images=metrics.preprocess_clickme_images(images),
        heatmaps=metrics.preprocess_clickme_heatmaps(heatmaps),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        sources=[s.source for s in samples],
    )
