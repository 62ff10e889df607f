"""What kind of artifact a file or directory is: ``dataset``, ``model`` or ``other``.

The ``user.metafs.kind`` extended attribute decides when it is set (on the file, or on the
nearest directory above it that has one). Otherwise the extension does: data-set formats
and images make data sets, serialized-model formats make models. A directory is a data set
when it is tagged so, or when it directly holds at least ``prov_dataset_dir_min`` data-set
files or images (a shard directory, an image directory); reads of the files inside such a
directory are recorded as one read of the directory.
"""

from __future__ import annotations

import posixpath

KIND_XATTR = "user.metafs.kind"
DATASET = "dataset"
MODEL = "model"
OTHER = "other"
KINDS = (DATASET, MODEL, OTHER)

DATASET_EXTS = frozenset({
    ".tfrecord", ".tfrecords", ".parquet", ".csv", ".tsv", ".npy", ".npz", ".jsonl",
    ".arrow", ".feather", ".avro", ".orc", ".hdf5", ".zarr", ".lmdb", ".wds",
})
IMAGE_EXTS = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
})
MODEL_EXTS = frozenset({
    ".pt", ".pth", ".pb", ".onnx", ".h5", ".keras", ".safetensors", ".pkl", ".joblib",
    ".ckpt", ".gguf", ".tflite", ".mlmodel",
})


def ext_of(name: str) -> str:
    """Lower-case extension with its dot ('' when none)."""
    return posixpath.splitext(name)[1].lower()


def is_data_file(name: str) -> bool:
    """A file that makes its directory look like a data set (data formats and images)."""
    e = ext_of(name)
    return e in DATASET_EXTS or e in IMAGE_EXTS


def normalize_kind(value: bytes | str | None) -> str | None:
    """The kind an xattr value names, or None for an empty or unknown value."""
    if value is None:
        return None
    v = (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    v = v.strip().strip('"').lower()
    aliases = {"data": DATASET, "data_set": DATASET, "data-set": DATASET, "datasets": DATASET,
               "models": MODEL, "checkpoint": MODEL}
    v = aliases.get(v, v)
    return v if v in KINDS else None


def classify(name: str, is_dir: bool, explicit: str | None = None,
             data_children: int = 0, dir_min: int = 2) -> str:
    """The kind of one file or directory from its name, its own ``user.metafs.kind``
    (``explicit``) and, for directories, the number of data files directly in it."""
    if explicit:
        return explicit
    if is_dir:
        return DATASET if data_children >= max(1, dir_min) else OTHER
    e = ext_of(name)
    if e in DATASET_EXTS or e in IMAGE_EXTS:
        return DATASET
    if e in MODEL_EXTS:
        return MODEL
    return OTHER
