"""A salient-object data set on disk, in the DUTS / ECSSD layout, read and checked up front.

The layout: images in one folder, and in another the masks as PNG files of the same name
(`0001.jpg` <-> `0001.png`), as DUTS-TR (`DUTS-TR-Image`, `DUTS-TR-Mask`), ECSSD (`images`,
`ground_truth_mask`), HKU-IS, PASCAL-S and DUT-OMRON ship them. `read_folder(root)` finds the
two folders under `root` (or takes them as given), pairs the files by name, and decodes every
image and mask once, in parallel, before any training. A pair cannot be used when

- a mask has no image of its name, or an image no mask (named, with the folder searched);
- a mask's size differs from its image's (both sizes named);
- the image or the mask does not decode (named, with the decoder's reason).

Those pairs are listed (the first ten, then a count) and the run stops (`BadPairsError`, exit
status 2), or with `skip_bad=True` (`--skip_bad_images`) they are left out and counted in
one line. A folder without images stops the run. Masks that are not binary (values other
than 0 and 255: antialiased edges, JPEG-like noise) are binarised at 0.5 (value >= 128) in
the input pipeline, as the SOD benchmarks do, with one note saying how many there were.
"""

from __future__ import annotations

import dataclasses
import os

from keras_res2net.cli_errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_SUFFIX = ".png"
# Sub-folder names of the common layouts, matched without case, image folder first.
LAYOUT_NAMES = (
    ("images", "masks"), ("images", "ground_truth_mask"), ("image", "mask"), ("imgs", "gt"),
    ("images", "gt"), ("img", "gt"), ("im", "gt"),
)
SHOWN = 10  # bad pairs listed in an error; the rest are counted


class BadPairsError(UsageError):
    """Image/mask pairs that cannot be used (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Pair:
    image: str
    mask: str


@dataclasses.dataclass
class SaliencyFolder:
    """The usable pairs of a data set folder, and what the check found."""

    image_dir: str
    mask_dir: str
    pairs: list[Pair]
    sizes: list[tuple[int, int]]  # (height, width) of each pair
    non_binary: int = 0  # masks binarised at 0.5
    left_out: int = 0  # pairs left out by skip_bad

    @property
    def name(self) -> str:
        return os.path.dirname(os.path.abspath(self.image_dir))


def find_layout(root: str) -> tuple[str, str]:
    """(image folder, mask folder) under `root`: a known pair of names (`LAYOUT_NAMES`), or
    the only sub-folders whose names end in image(s)/mask(s) (DUTS-TR-Image, DUTS-TR-Mask)."""
    if not os.path.isdir(root):
        raise UsageError(f"--data {root}: no such folder (give 'synthetic' or a folder holding "
                         "an image folder and a mask folder).")
    folders = {name.lower(): name for name in sorted(os.listdir(root))
               if os.path.isdir(os.path.join(root, name))}
    for images, masks in LAYOUT_NAMES:
        if images in folders and masks in folders:
            return os.path.join(root, folders[images]), os.path.join(root, folders[masks])
    image_like = [name for key, name in folders.items() if key.endswith(("image", "images"))]
    mask_like = [name for key, name in folders.items() if key.endswith(("mask", "masks"))]
    if len(image_like) == 1 and len(mask_like) == 1:
        return os.path.join(root, image_like[0]), os.path.join(root, mask_like[0])
    raise UsageError(f"--data {root}: cannot tell its image folder from its mask folder (found "
                     f"sub-folders {sorted(folders.values()) or 'none'}); expected e.g. images/ "
                     "and masks/, or DUTS-TR-Image/ and DUTS-TR-Mask/, or name them with "
                     "--image_folder and --mask_folder.")


def _files(folder: str, suffixes: tuple[str, ...]) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: no such folder.")
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in suffixes and os.path.isfile(os.path.join(folder, name)):
            found.setdefault(stem, os.path.join(folder, name))
    return found


def _decode_reason(path: str, channels: int) -> str:
    """Why `path` does not decode, in TensorFlow's words without the op name ("" if it does)."""
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    except tf.errors.OpError as error:
        reason = error.message.split("[Op:")[0].strip().rstrip(".;, ")
        return f"does not decode ({reason})"
    return ""


def _decode_all(pairs: list[Pair]) -> dict[int, tuple[tuple[int, int], tuple[int, int], bool]]:
    """index -> (image size, mask size, mask is binary) for every pair that decodes; one
    parallel tf.data pass."""
    import tensorflow as tf

    if not pairs:
        return {}
    images = tf.constant([pair.image for pair in pairs])
    masks = tf.constant([pair.mask for pair in pairs])

    def decode(index):
        image = tf.io.decode_image(tf.io.read_file(images[index]), channels=3,
                                   expand_animations=False)
        mask = tf.io.decode_image(tf.io.read_file(masks[index]), channels=1,
                                  expand_animations=False)
        binary = tf.reduce_all(tf.logical_or(tf.equal(mask, 0), tf.equal(mask, 255)))
        return index, tf.shape(image)[:2], tf.shape(mask)[:2], binary

    passes = (tf.data.Dataset.range(len(pairs))
              .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
              .ignore_errors(log_warning=False))
    return {int(index): (tuple(int(v) for v in image), tuple(int(v) for v in mask), bool(binary))
            for index, image, mask, binary in passes.as_numpy_iterator()}


def read_folder(root: str | None = None, *, image_dir: str | None = None,
                mask_dir: str | None = None, skip_bad: bool = False, flag: str = "--data",
                log=print) -> SaliencyFolder:
    """Pair and check the data set under `root` (or `image_dir` + `mask_dir`); see the module
    docstring for what is refused, skipped and noted."""
    if image_dir is None or mask_dir is None:
        found_images, found_masks = find_layout(root)
        image_dir, mask_dir = image_dir or found_images, mask_dir or found_masks
    image_files = _files(image_dir, IMAGE_SUFFIXES)
    mask_files = _files(mask_dir, (MASK_SUFFIX,))
    if not image_files:
        raise UsageError(f"{flag} {root or image_dir}: {image_dir} holds no images "
                         f"({', '.join(IMAGE_SUFFIXES)}).")
    bad: list[tuple[str, str]] = []
    pairs = []
    stems = sorted(set(image_files) | set(mask_files))
    for stem in stems:
        if stem not in mask_files:
            bad.append((image_files[stem], f"has no mask {stem}{MASK_SUFFIX} in {mask_dir}"))
        elif stem not in image_files:
            bad.append((mask_files[stem], f"is a mask without an image {stem}.* in {image_dir}"))
        else:
            pairs.append(Pair(image_files[stem], mask_files[stem]))
    decoded = _decode_all(pairs)
    usable, sizes, non_binary = [], [], 0
    for index, pair in enumerate(pairs):
        if index not in decoded:
            reason = _decode_reason(pair.image, 3)
            bad.append((pair.image, reason) if reason else
                       (pair.mask, _decode_reason(pair.mask, 1) or "does not decode"))
            continue
        image_size, mask_size, binary = decoded[index]
        if image_size != mask_size:
            bad.append((pair.mask, f"is {mask_size[1]}x{mask_size[0]} pixels, but its image "
                                   f"{pair.image} is {image_size[1]}x{image_size[0]}"))
            continue
        usable.append(pair)
        sizes.append(image_size)
        non_binary += not binary
    total = len(stems)
    if bad and not skip_bad:
        lines = [f"{path}: {reason}" for path, reason in bad[:SHOWN]]
        if len(bad) > SHOWN:
            lines.append(f"... and {len(bad) - SHOWN} more")
        raise BadPairsError(f"{flag} {root or image_dir}: {len(bad)} of its {total} image/mask "
                            "pairs cannot be used (pass --skip_bad_images to go on without "
                            "them):\n  " + "\n  ".join(lines))
    if bad:
        log(f"note: {root or image_dir}: left out {len(bad)} of {total} image/mask pairs that "
            f"cannot be used (--skip_bad_images); the first: {bad[0][0]}: {bad[0][1]}")
    if not usable:
        raise UsageError(f"{flag} {root or image_dir}: no usable image/mask pair.")
    if non_binary:
        log(f"note: {mask_dir}: {non_binary} of {len(usable)} masks are not binary (values "
            "other than 0 and 255); binarised at 0.5, as the SOD benchmarks do.")
    return SaliencyFolder(image_dir, mask_dir, usable, sizes, non_binary, len(bad))
