r"""Train a Res2Net on ImageNet, a TFDS dataset, TFRecords, an image folder or `digits`.

    python train/imagenet.py --data digits --model_dir runs/digits
    python train/imagenet.py --model res2net50_v1b_26w_4s --strategy mirrored \
        --data imagenet2012 --data_dir ~/tensorflow_datasets --model_dir runs/r50

Only parses flags; the recipe lives in `keras_res2net.training`. Flags left unset take the
data's defaults (`--data digits`: a small Res2Net, 32 px, 30 epochs; otherwise the reference
ImageNet recipe). `--helpfull` lists every flag.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

from keras_res2net.training import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS
# Data.
flags.DEFINE_string("data", "digits", "'digits' (embedded, no download), a TFDS dataset name "
                    "(imagenet2012, imagenette, ...), 'tfrecord' (train-*/validation-* shards "
                    "with image/encoded, image/class/label) or 'folder' (DIR/train/<class>/...).")
flags.DEFINE_string("data_dir", None, "TFDS data dir, TFRecord dir or image folder root.")
flags.DEFINE_string("train_split", None, "Train split (TFDS) / shard prefix / sub-folder.")
flags.DEFINE_string("val_split", None, "Validation split / shard prefix / sub-folder.")
flags.DEFINE_bool("skip_bad_images", False, "--data folder: skip (and count) images that do "
                  "not decode, instead of stopping before training with their list.")
flags.DEFINE_integer("num_classes", None, "Classes in TFRecord data (default 1000).")
flags.DEFINE_integer("label_offset", 0, "Subtracted from TFRecord labels (1 for the classic "
                     "1-based ImageNet converter).")
flags.DEFINE_string("model_dir", "runs/default", "Checkpoints, TensorBoard, model.keras, "
                    "history.png. Rerunning the same command resumes from here.")
# Model.
flags.DEFINE_string("model", None, "Variant name (keras_res2net.list_models()).")
flags.DEFINE_list("layers", None, "Blocks per stage, e.g. 1,1,1,1 (default: the variant's).")
flags.DEFINE_integer("base_width", None, "Res2Net base width (default: the variant's).")
flags.DEFINE_integer("scale", None, "Res2Net scale (default: the variant's).")
flags.DEFINE_integer("image_size", None, "Input size (224; digits 32).")
flags.DEFINE_string("init_weights", None, "PyTorch or .weights.h5 checkpoint for the backbone; "
                    "a new classifier head is trained (fine-tuning).")
# Recipe.
flags.DEFINE_integer("epochs", None, "Epochs (100; digits 30).")
flags.DEFINE_integer("batch_size", None, "Global batch size over all replicas (256; digits 64).")
flags.DEFINE_float("base_lr", None, "Learning rate per 256 images, scaled linearly (0.1).")
flags.DEFINE_enum("optimizer", "sgd", config_lib.OPTIMIZERS, "SGD (momentum) or AdamW.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_bool("nesterov", False, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", None, "Weight decay, not on BatchNorm/biases (1e-4).")
flags.DEFINE_enum("schedule", "cosine", config_lib.SCHEDULES, "Cosine or step decay, both "
                  "after a linear warm-up.")
flags.DEFINE_float("warmup_epochs", None, "Linear warm-up epochs (5; digits 1).")
flags.DEFINE_list("step_epochs", ["30", "60", "90"], "Epochs where step decay multiplies the "
                  "learning rate by --step_factor.")
flags.DEFINE_float("step_factor", 0.1, "Step decay factor.")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing (the reference option: 0.1).")
flags.DEFINE_float("mixup_alpha", 0.0, "Mixup Beta(alpha, alpha); 0 disables.")
flags.DEFINE_float("cutmix_alpha", 0.0, "CutMix Beta(alpha, alpha); 0 disables.")
flags.DEFINE_float("crop_scale_min", None, "Smallest random-resized-crop area (0.08).")
flags.DEFINE_bool("flip", None, "Random horizontal flips (on; off for digits).")
flags.DEFINE_float("eval_crop_fraction", None,
                   "Eval centre crop / resize (default: the model's crop_pct, 224/256).")
# Execution.
flags.DEFINE_enum("strategy", "default", config_lib.STRATEGIES, "tf.distribute strategy; "
                  "multi_worker reads TF_CONFIG.")
flags.DEFINE_string("tpu", None, "TPU name or address for --strategy tpu ('local' on a TPU VM).")
flags.DEFINE_string("device", None, "Device for --strategy one_device (default gpu:0 or cpu:0).")
flags.DEFINE_enum("mixed_precision", "float32", config_lib.PRECISIONS, "Compute dtype policy; "
                  "mixed_float16 uses loss scaling.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the forward and backward pass.")
flags.DEFINE_integer("seed", 0, "Seed for weights, data order and augmentation.")
flags.DEFINE_bool("deterministic", False, "Op determinism: two runs with the same seed, "
                  "cluster and thread settings (or a run killed and resumed) write the same "
                  "weights; refuses a TPU and ops without a deterministic kernel.")
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: one pass).")
flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every N steps (and at each "
                     "epoch end).")
flags.DEFINE_integer("max_checkpoints", 3, "Checkpoints kept.")
flags.DEFINE_integer("shuffle_buffer", 10_000, "Shuffle buffer (records).")
flags.DEFINE_bool("eval_only", False, "Evaluate the latest checkpoint (or --init_weights).")
flags.DEFINE_bool("verbose", False, "Print the traceback of an error, not just its message.")


def config_from_flags() -> config_lib.TrainConfig:
    """A resolved TrainConfig from the parsed flags (ValueError on a bad combination)."""
    def ints(name):
        values = FLAGS[name].value
        try:
            return tuple(int(v) for v in values) if values is not None else None
        except ValueError as err:
            raise ValueError(f"--{name} expects comma-separated integers; got "
                             f"{','.join(values)!r}.") from err

    fields = {f.name for f in config_lib.dataclasses.fields(config_lib.TrainConfig)}
    values = {name: FLAGS[name].value for name in fields if name in FLAGS}
    values["layers"] = ints("layers")
    values["step_epochs"] = ints("step_epochs")
    return config_lib.resolve_config(config_lib.TrainConfig(**values))


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from absl import logging

    from keras_res2net.cli_errors import report

    if not FLAGS["verbosity"].present:  # TF's INFO lines (one per checkpoint) are noise here
        logging.set_verbosity(logging.WARNING)
    prog = os.path.basename(sys.argv[0])
    try:
        config = config_from_flags()
    except ValueError as err:
        return report(err, prog, FLAGS.verbose)
    from keras_res2net.training import run
    from keras_res2net.training.trainer import PreemptedError

    try:
        run(config)
    except PreemptedError as stopped:  # a checkpoint was saved: not an error
        print(f"{prog}: {stopped}", flush=True)
        return stopped.exit_code
    except Exception as err:  # noqa: BLE001  one line per error; --verbose for the traceback
        return report(err, prog, FLAGS.verbose)
    return 0


if __name__ == "__main__":
    app.run(main)
