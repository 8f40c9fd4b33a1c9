"""Where the images come from: digits, a TFDS dataset, TFRecord shards or a folder of images.

Every source yields `(image, label)` records in a fixed order: `image` is either an encoded
image (JPEG or PNG bytes, decoded later so random crops can use `decode_and_crop_jpeg`) or a
uint8 array (digits, TFDS datasets stored as arrays); the label is an int32 class index.
A missing dataset fails at once with a message saying how to provide it: nothing downloads.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TFRECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


@dataclasses.dataclass
class Source:
    """One dataset: its class count, split sizes and a function making each split's records.

    `records(split, shuffle_seed)` returns a dataset of `(image, label)`; `shuffle_seed` orders
    the files of sharded sources (None keeps the stored order).
    """

    name: str
    num_classes: int
    num_examples: dict[str, int]
    splits: tuple[str, str]  # (train, validation)
    records: Callable[[str, int | None], tf.data.Dataset]


def open_source(data: str, *, data_dir: str | None = None, image_size: int = 32,
                train_split: str | None = None, val_split: str | None = None,
                num_classes: int | None = None, label_offset: int = 0, seed: int = 0,
                skip_bad_images: bool = False) -> Source:
    """The `Source` for `--data`: "digits", "tfrecord", "folder" or any TFDS name."""
    if data == "digits":
        return digits_source(image_size, seed)
    if data == "tfrecord":
        return tfrecord_source(data_dir, train_split or "train", val_split or "validation",
                               num_classes or 1000, label_offset)
    if data == "folder":
        return folder_source(data_dir, train_split, val_split, skip_bad_images=skip_bad_images)
    return tfds_source(data, data_dir, train_split, val_split)


def digits_source(image_size: int, seed: int) -> Source:
    """scikit-learn's digits, already upscaled to `image_size` (uint8 RGB, in memory)."""
    from keras_res2net.datasets import load_digits

    splits = load_digits(image_size=image_size, seed=seed)
    arrays = {"train": (splits.train_images, splits.train_labels),
              "validation": (splits.val_images, splits.val_labels)}

    def records(split: str, shuffle_seed: int | None) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(arrays[split])

    return Source("digits", splits.num_classes,
                  {name: len(labels) for name, (_, labels) in arrays.items()},
                  ("train", "validation"), records)


def tfds_source(name: str, data_dir: str | None, train_split: str | None,
                val_split: str | None) -> Source:
    """A prepared TFDS image-classification dataset; never downloads (fails fast instead)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(f"--data {name!r} is neither digits, tfrecord, folder nor a TFDS "
                         f"dataset name ({err.__class__.__name__}).") from err
    missing = (f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. Nothing is "
               "downloaded at run time: prepare it once with `tfds build "
               f"{name} --data_dir DIR` (imagenet2012 needs its manual files in "
               "DIR/downloads/manual), then pass --data_dir DIR.")
    splits = builder.info.splits
    train = train_split or "train"
    val = val_split or ("test" if splits and "validation" not in splits else "validation")
    try:
        builder.as_dataset(split=train)  # fails here, in seconds, if the data is not there
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as err:
        raise FileNotFoundError(missing) from err
    except ValueError as err:  # an unknown split name
        raise ValueError(f"TFDS dataset {name!r} has splits {list(splits)}: {err}") from err
    image_key, label_key = _tfds_keys(builder.info.features, name)
    encoded = isinstance(builder.info.features[image_key], tfds.features.Image)
    decoders = {image_key: tfds.decode.SkipDecoding()} if encoded else None

    def records(split: str, shuffle_seed: int | None) -> tf.data.Dataset:
        config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
        ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                decoders=decoders, read_config=config)
        return ds.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))

    if splits:
        sizes = {split: splits[split].num_examples for split in (train, val)}
    else:  # metadata without split sizes (e.g. tfds.testing.mock_data): count once
        sizes = {split: int(records(split, None).reduce(0, lambda n, _: n + 1))
                 for split in (train, val)}
    num_classes = builder.info.features[label_key].num_classes
    return Source(name, num_classes, sizes, (train, val), records)


def _tfds_keys(features, name: str) -> tuple[str, str]:
    keys = set(features.keys())
    if {"image", "label"} <= keys:
        return "image", "label"
    raise ValueError(f"TFDS dataset {name!r} is not an image-classification dataset with "
                     f"'image' and 'label' features (it has {sorted(keys)}).")


def tfrecord_source(data_dir: str, train_prefix: str, val_prefix: str, num_classes: int,
                    label_offset: int) -> Source:
    """Shards `{prefix}-*` with `image/encoded` and `image/class/label`, the ImageNet layout.

    The classic ImageNet converter stores labels 1..1000: pass `label_offset=1` for those.
    """
    files = {}
    for prefix in (train_prefix, val_prefix):
        files[prefix] = sorted(tf.io.gfile.glob(os.path.join(data_dir, f"{prefix}-*")))
        if not files[prefix]:
            raise FileNotFoundError(f"--data tfrecord: no {prefix}-* shards in {data_dir!r} "
                                    "(expected the ImageNet layout, e.g. train-00000-of-01024 "
                                    "and validation-00000-of-00128).")

    def parse(record):
        example = tf.io.parse_single_example(record, TFRECORD_FEATURES)
        label = tf.cast(example["image/class/label"], tf.int32) - label_offset
        return example["image/encoded"], label

    def records(split: str, shuffle_seed: int | None) -> tf.data.Dataset:
        paths = tf.data.Dataset.from_tensor_slices(files[split])
        if shuffle_seed is not None:
            paths = paths.shuffle(len(files[split]), seed=shuffle_seed)
        ds = paths.interleave(tf.data.TFRecordDataset, cycle_length=min(16, len(files[split])),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

    sizes = {split: _count_records(paths) for split, paths in files.items()}
    return Source("tfrecord", num_classes, sizes, (train_prefix, val_prefix), records)


def _count_records(paths: list[str]) -> int:
    # One pass over the raw bytes (no parsing); pass --steps_per_epoch to skip it on big data.
    return int(tf.data.TFRecordDataset(paths).reduce(0, lambda n, _: n + 1))


def folder_source(data_dir: str, train_split: str | None, val_split: str | None,
                  skip_bad_images: bool = False) -> Source:
    """`data_dir/{train,val}/<class>/<image>`: class indices follow sorted folder names.

    Every image is decoded once up front (`find_bad_images`), so a corrupt file stops the run
    before training with the list of bad files, or with `skip_bad_images` is left out and
    counted, instead of failing mid-epoch with a decoder error that names no file.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir!r}: no such folder.")
    train = train_split or "train"
    val = val_split or next((name for name in ("val", "validation")
                             if os.path.isdir(os.path.join(data_dir, name))), "val")
    listing = {}
    for split in (train, val):
        root = os.path.join(data_dir, split)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--data folder: {root!r} is missing (expected "
                                    f"{data_dir}/{train}/<class>/*.jpg and {data_dir}/{val}/...).")
        listing[split] = root
    classes = sorted(entry.name for entry in os.scandir(listing[train]) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"--data folder: {listing[train]!r} has no class sub-folders.")
    if len(classes) < 2:
        raise ValueError(f"--data folder: {listing[train]!r} has a single class folder "
                         f"({classes[0]!r}); a classifier needs at least 2 classes.")
    files = {split: _list_images(root, classes) for split, root in listing.items()}
    for split, (paths, _) in files.items():
        if not paths:
            raise FileNotFoundError(f"--data folder: no images in {listing[split]!r}.")
    bad = find_bad_images([path for paths, _ in files.values() for path in paths])
    if bad and not skip_bad_images:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more"
                                          if len(bad) > 20 else "")
        raise ValueError(f"--data folder: {len(bad)} image(s) in {data_dir!r} cannot be decoded "
                         f"(pass --skip_bad_images to train without them):\n  {shown}")
    if bad:
        skipped = set(bad)
        for split, (paths, labels) in list(files.items()):
            kept = [(path, label) for path, label in zip(paths, labels, strict=True)
                    if path not in skipped]
            if not kept:
                raise FileNotFoundError(f"--data folder: no decodable images in "
                                        f"{listing[split]!r}.")
            files[split] = ([path for path, _ in kept], [label for _, label in kept])
        print(f"--skip_bad_images: skipped {len(bad)} image(s) that cannot be decoded "
              f"(first: {bad[0]}).", flush=True)

    def records(split: str, shuffle_seed: int | None) -> tf.data.Dataset:
        paths, labels = files[split]
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        return ds.map(lambda path, label: (tf.io.read_file(path), label),
                      num_parallel_calls=tf.data.AUTOTUNE)

    return Source("folder", len(classes), {split: len(files[split][0]) for split in files},
                  (train, val), records)


def find_bad_images(paths: list[str]) -> list[str]:
    """The paths TensorFlow's decoders (the ones training uses) cannot decode, in order.

    One parallel tf.data pass: decode each file, keep the index of those that succeed."""
    if not paths:
        return []

    def decode(index):
        image = tf.io.decode_image(tf.io.read_file(tf.gather(tensor, index)), channels=3,
                                   expand_animations=False)
        return index, tf.shape(image)[0]

    tensor = tf.constant(paths)
    ds = tf.data.Dataset.range(len(paths)).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=False)
    good = {int(index) for index, _ in ds.as_numpy_iterator()}
    return [path for i, path in enumerate(paths) if i not in good]


def _list_images(root: str, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for index, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for file in sorted(os.listdir(folder)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(folder, file))
                labels.append(index)
    return paths, labels
