"""Batch-1 latency of one model in Keras/TF, TFLite fp32, TFLite int8 and onnxruntime.

    python benchmarks/export_latency.py                       # tiny Res2Net, 32x32, digits
    python benchmarks/export_latency.py --model runs/digits/model.keras
    python benchmarks/export_latency.py --model res2net50_26w_4s --input-size 224
    python benchmarks/export_latency.py --task detection              # synthetic Mask R-CNN
    python benchmarks/export_latency.py --task detection --checkpoint RUN_DIR --input-size 800x1344
    python benchmarks/export_latency.py --task detection \
        --experiment mask_rcnn_res2net101_fpn_coco --input-size 384x640 --runs 5 --check-images 1

--task detection without --checkpoint builds --experiment with seeded random weights whose
class and mask logits are scaled by 8 (`detection_latency.confident_run`), so an untrained
detector has detections to check; its runtimes are called in alternation (median per runtime).
Every artifact is converted with the exporter's own functions and checked against the Keras
model first (a latency for a wrong artifact means nothing); then each runtime is timed on the
same single image: median of --runs calls after warm-up. Speed-ups are against the Keras model
called through `tf.function`. Runtimes use their default thread settings.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (res2net50_26w_4s with layers 1,1,1,1 and base width 8, "
                        "random weights), a variant name or a .keras file")
    parser.add_argument("--input-size", default=None,
                        help="classifier: N (default 32); detection: HxW (default: the "
                        "experiment's test size)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--task", choices=("classification", "detection"),
                        default="classification")
    parser.add_argument("--checkpoint", help="--task detection: a run folder (default: the "
                        "synthetic Mask R-CNN with confident random weights)")
    parser.add_argument("--experiment", default="mask_rcnn_res2net50_fpn_synthetic",
                        help="--task detection without --checkpoint: the experiment to build")
    parser.add_argument("--check-images", type=int, default=3,
                        help="--task detection: generated images each artifact is checked on")
    args = parser.parse_args()
    if args.task == "detection":
        detection_main(args)
        return
    args.input_size = int(args.input_size or 32)

    import keras
    import tensorflow as tf

    from keras_res2net.export import calibration, onnx_file, source, tflite, verify
    from keras_res2net.summary import trainable_params

    if args.model == "tiny":
        keras.utils.set_random_seed(0)
        model = source.load_model("res2net50_26w_4s", input_size=args.input_size, classes=10,
                                  layers=(1, 1, 1, 1), base_width=8)
    else:
        model = source.load_model(args.model, input_size=args.input_size)
    serving = source.serving_model(model, input_size=args.input_size)
    samples = calibration.load_samples("digits", serving.image_shape)
    images = serving.model_inputs(samples.check)
    reference = serving.reference(samples.check)

    runners = {}
    call = tf.function(lambda x: serving.source(x, training=False))
    runners["keras tf.function"] = lambda x: call(x).numpy()
    with tempfile.TemporaryDirectory() as folder:
        for name, quantize in (("tflite fp32", None), ("tflite int8", "int8")):
            path = os.path.join(folder, f"{name.replace(' ', '_')}.tflite")
            with open(path, "wb") as handle:
                handle.write(tflite.convert(serving, quantize, samples.calibration))
            runners[name] = tflite.load_tflite(path)
        path = os.path.join(folder, "model.onnx")
        onnx_file.write_onnx(serving, path)
        runners["onnxruntime"] = onnx_file.load_onnx(path)

        print(f"{model.name}: {trainable_params(model):,} parameters (PyTorch's count), input "
              f"{'x'.join(map(str, serving.image_shape))}, batch 1, median of {args.runs} runs; "
              f"checked on {samples.source}")
        rows = []
        for name, run in runners.items():
            diff, agreement = verify.compare(reference, run(images))
            latency = verify.median_latency_ms(run, images[:1], args.runs)
            rows.append((name, latency, diff, agreement))
    base = rows[0][1]
    print(f"{'runtime':<18} {'median ms':>10} {'speed-up':>15} {'max|diff|':>10} "
          f"{'top-1 agr.':>10}")
    for name, latency, diff, agreement in rows:
        print(f"{name:<18} {latency:>10.3f} {base / latency:>14.2f}x {diff:>10.1e} "
              f"{agreement:>10.2%}")


def detection_main(args) -> None:
    """`--task detection`: see keras_res2net.export.detection_latency."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from keras_res2net.export import detection_latency
    from keras_res2net.export.plan import parse_size

    size = parse_size(args.input_size) if args.input_size else None
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or detection_latency.confident_run(
            os.path.join(folder, "run"), args.experiment, build_size=size)
        rows = detection_latency.benchmark(checkpoint, size, args.runs, args.check_images)
    print(f"{args.checkpoint or args.experiment} at {args.input_size or 'its test size'}: "
          f"batch 1, median of {args.runs} alternating runs; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    base = rows[0][1]
    print(f"{'runtime':<26} {'median ms':>10} {'vs keras':>9}  check")
    for name, latency, check in rows:
        print(f"{name:<26} {latency:>10.2f} {base / latency:>8.2f}x  {check}")


if __name__ == "__main__":
    main()
