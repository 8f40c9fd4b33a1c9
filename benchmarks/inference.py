"""CPU inference: Res2Net plain and BN-folded vs keras.applications, timm, TFLite and ONNX.

    python benchmarks/inference.py [--repeats 9] [--threads 2] [--batches 1,8]
        [--reference-python /tmp/ref-venv/bin/python] [--no-edge] [--no-keras]
        [--no-detection] [--no-agreement] [--digits-model PATH]

Keras part: for each pair (ours, keras.applications model) at each batch size, three forward
passes run in alternation in one process (ours plain, ours with `fold_batchnorm`, the
reference; plus timm's res2net50_26w_4s in a subprocess served call by call when a Python
with torch and timm is given), so machine noise hits all of them alike; medians and ratios
are printed. Edge part: Res2Net-50 (folded, as `res2net-export` writes it) and, as the
control, keras.applications' ResNet50, each as TFLite fp32, TFLite int8 and ONNX, all on
`--threads` threads (TFLite with its default XNNPACK delegate, and with LiteRT's latest
XNNPACK features; onnxruntime with intra-op threads), plus TFLite fp32 with the interpreter's
default thread setting, all timed in one alternating run at batch 1; then int8 vs fp32
top-1 agreement and speed on two models with meaningful outputs
(`benchmarks/int8_agreement.py`: Res2Net-50 with a head fit on generated classes, and the
digits model). Detection part: the synthetic Mask R-CNN at its
test size, plain vs backbone BN folded (`detection.fold.fold_detector`), eager (as the predict
CLI runs it) and as a `tf.function` (as evaluation runs it), in alternation. The load average
is printed at start and end: on a shared machine only the ratios mean something. Parameters
are counted as PyTorch does (BatchNorm running statistics excluded): 25,699,120 for
res2net50_26w_4s.
Targets (figures, not tests): Res2Net-50 within 1.10x of ResNet50 and 0.75x of timm's time;
TFLite fp32 no slower than onnxruntime; TFLite int8 3x faster than fp32 with >= 99% top-1
agreement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PAIRS = [("res2net50_26w_4s", "ResNet50"), ("res2net101_26w_4s", "ResNet101")]
# Served one call per request line, so timm is timed in alternation with the Keras models.
TIMM_SERVER = """
import sys, time, torch, timm
torch.set_num_threads(int(sys.argv[1]))
model = timm.create_model("res2net50_26w_4s").eval()
inputs = {}
print("ready", sum(p.numel() for p in model.parameters()), flush=True)
with torch.inference_mode():
    for line in sys.stdin:
        batch = int(line)
        x = inputs.setdefault(batch, torch.randn(batch, 3, 224, 224))
        start = time.perf_counter(); model(x); print(time.perf_counter() - start, flush=True)
"""


def load() -> str:
    return "load average " + ", ".join(f"{value:.1f}" for value in os.getloadavg())


def configure_threads(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def build(name: str, size: int = 224):
    import keras

    import keras_res2net

    if name.startswith("res2net"):
        return keras_res2net.create_model(name, input_shape=(size, size, 3))
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))


def forward_fn(model):
    """The model's inference forward pass without Keras' per-call predict overhead: a
    tf.function on TensorFlow (same treatment for every model), predict_on_batch elsewhere."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        call = tf.function(lambda images: model(images, training=False))
        return lambda images: call(images).numpy()
    return model.predict_on_batch


class TimmServer:
    """timm's res2net50_26w_4s in a subprocess of `python`, one timed call per request."""

    def __init__(self, python: str, threads: int):
        self.process = subprocess.Popen([python, "-c", TIMM_SERVER, str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        ready = self.process.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"{python} could not build timm's res2net50_26w_4s")
        self.params = int(ready[1])

    def __call__(self, batch: int) -> float:
        self.process.stdin.write(f"{batch}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def time_alternately(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each named zero-argument callable, timed in rounds."""
    for call in calls.values():  # trace and warm up
        call()
        call()
    samples = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            seconds = call()
            samples[name].append(seconds if isinstance(seconds, float) else
                                 time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def keras_section(args, timm: TimmServer | None) -> None:
    import keras
    import numpy as np

    from keras_res2net.fold import fold_batchnorm
    from keras_res2net.summary import trainable_params

    print(f"{'model':18s} {'vs':9s} {'batch':>5s} {'plain ms':>9s} {'folded':>8s} "
          f"{'ref ms':>8s} {'fold/plain':>10s} {'plain/ref':>9s} {'fold/ref':>8s}")
    params = {}
    for pair in args.pairs.split(","):
        ours_name, ref_name = pair.split(":")
        plain, ref = build(ours_name), build(ref_name)
        folded = fold_batchnorm(plain, log=lambda _: None)
        params.update({ours_name: trainable_params(plain), ref_name: trainable_params(ref),
                       f"{ours_name} folded": trainable_params(folded)})
        for batch in args.batches:
            images = np.random.default_rng(0).standard_normal(
                (batch, 224, 224, 3)).astype("float32")
            forwards = {"plain": forward_fn(plain), "folded": forward_fn(folded),
                        "ref": forward_fn(ref)}
            calls = {name: (lambda f=f, x=images: f(x)) for name, f in forwards.items()}
            use_timm = timm is not None and ours_name == "res2net50_26w_4s"
            if use_timm:
                calls["timm"] = lambda batch=batch: timm(batch)
            t = time_alternately(calls, args.repeats)
            print(f"{ours_name:18s} {ref_name:9s} {batch:>5d} {t['plain'] * 1e3:>9.1f} "
                  f"{t['folded'] * 1e3:>8.1f} {t['ref'] * 1e3:>8.1f} "
                  f"{t['folded'] / t['plain']:>10.2f} {t['plain'] / t['ref']:>9.2f} "
                  f"{t['folded'] / t['ref']:>8.2f}", flush=True)
            if use_timm:
                print(f"{ours_name:18s} {'timm':9s} {batch:>5d} {t['plain'] * 1e3:>9.1f} "
                      f"{t['folded'] * 1e3:>8.1f} {t['timm'] * 1e3:>8.1f} "
                      f"{t['folded'] / t['plain']:>10.2f} {t['plain'] / t['timm']:>9.2f} "
                      f"{t['folded'] / t['timm']:>8.2f}", flush=True)
        keras.backend.clear_session()
    if timm is not None:
        params["timm res2net50_26w_4s"] = timm.params
    print("ratios: first / second time (below 1.00: the first is faster)")
    print("parameters (PyTorch's convention, BatchNorm running statistics excluded): " +
          ", ".join(f"{name} {count:,}" for name, count in params.items()))


def edge_runners(args, model_name: str) -> dict:
    """name -> batch-1 callable for `model_name` as TFLite fp32/int8 and ONNX (and Keras).

    A keras.applications model (the ResNet50 control) is exported as it is: its convs carry
    a bias, and both converters fold the BatchNorm that follows them."""
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    from keras_res2net.export import calibration, onnx_file, source, tflite

    keras.utils.set_random_seed(0)
    ours = model_name.startswith("res2net")
    serving = source.serving_model(build(model_name, args.edge_size),
                                   fold=ours and not args.edge_no_fold)
    samples = calibration.load_samples("digits", serving.image_shape,
                                       calibration_size=args.calibration_size)
    image = serving.model_inputs(samples.check[:1])
    folder = tempfile.mkdtemp(prefix="res2net-bench-")
    runners = {}
    call = tf.function(lambda x: serving.model(x, training=False))
    runners[f"{model_name} keras tf.function"] = lambda: call(image)
    interpreter = tflite.interpreter_class()
    for name, quantize in (("tflite fp32", None), ("tflite int8", "int8")):
        path = os.path.join(folder, f"{quantize or 'fp32'}.tflite")
        with open(path, "wb") as handle:
            handle.write(tflite.convert(serving, quantize, samples.calibration))
        for label, threads, latest in (
                (f"{model_name} {name} {args.threads}t", args.threads, False),
                (f"{model_name} {name} {args.threads}t latest XNNPACK", args.threads, True),
                (f"{model_name} {name} default threads", None, False)):
            if quantize and (threads is None or latest):
                continue
            # `latest`: XNNPACK with the features LiteRT has not made default yet.
            extra = {"experimental_default_delegate_latest_features": True} if latest else {}
            try:
                runner = interpreter(model_path=path, num_threads=threads, **extra)
            except TypeError:  # tf.lite's interpreter lacks the option
                continue
            runner.allocate_tensors()
            detail = runner.get_input_details()[0]

            def run(runner=runner, detail=detail):
                runner.set_tensor(detail["index"], image.astype(detail["dtype"]))
                runner.invoke()

            runners[label] = run
    path = os.path.join(folder, "model.onnx")
    onnx_file.write_onnx(serving, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    runners[f"{model_name} onnxruntime {args.threads}t"] = (
        lambda: session.run(None, {input_name: image}))
    return runners


def edge_section(args) -> None:
    """Every edge model's runtimes in one alternating run; ratios to each model's TFLite
    fp32. The ResNet50 control says whether a TFLite/onnxruntime gap is the runtimes' conv
    kernels (ResNet50 shows it too) or Res2Net's splits and concatenations (it does not)."""
    models = args.edge_models.split(",")
    runners = {}
    for name in models:
        runners.update({label: run for label, run in edge_runners(args, name).items()
                        if not any(skip and skip in label for skip in args.edge_skip.split(","))})
    times = time_alternately(runners, args.repeats)
    fold = "unfolded" if args.edge_no_fold else "BN folded"
    print(f"\n{', '.join(models)} (Res2Net {fold}) {args.edge_size}x{args.edge_size}, batch 1, "
          f"median of {args.repeats} alternating rounds")
    print(f"{'runtime':44s} {'ms':>8s} {'vs tflite fp32':>15s}")
    for name, seconds in times.items():
        model = name.split()[0]
        base = times[f"{model} tflite fp32 {args.threads}t"]
        print(f"{name:44s} {seconds * 1e3:>8.1f} {seconds / base:>14.2f}x")


def detection_section(args) -> None:
    """The detector's test-time latency, plain vs backbone-folded, in alternation."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_res2net.detection import configs, deploy
    from keras_res2net.detection.data.synthetic import make_image
    from keras_res2net.detection.fold import fold_detector
    from keras_res2net.detection.task import DetectionTask

    config = configs.get_experiment(args.detection_experiment)
    height, width = deploy.default_input_size(config)  # the experiment's test size
    rng = np.random.default_rng(0)
    image = (make_image(rng, height, 3)[0] if height == width else
             rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    inputs = {"images": tf.constant(image[None].astype("float32"))}
    keras.utils.set_random_seed(0)
    plain = DetectionTask(config).build_model()
    messages = []
    folded = fold_detector(plain, log=messages.append)
    graphs = {name: tf.function(lambda x, m=model: m(x, training=False))
              for name, model in (("plain", plain), ("folded", folded))}
    outputs = {name: {k: np.asarray(v) for k, v in graphs[name](inputs).items()}
               for name in graphs}
    same = (np.array_equal(outputs["plain"]["classes"], outputs["folded"]["classes"]) and
            np.array_equal(outputs["plain"]["num_detections"],
                           outputs["folded"]["num_detections"]))
    box_diff = float(np.abs(outputs["plain"]["boxes"] - outputs["folded"]["boxes"]).max())
    calls = {}
    for name, model in (("plain", plain), ("folded", folded)):
        calls[f"{name} eager"] = lambda m=model: np.asarray(m(inputs, training=False)["boxes"])
    for name, graph in graphs.items():
        calls[f"{name} tf.function"] = lambda g=graph: np.asarray(g(inputs)["boxes"])
    t = time_alternately(calls, args.repeats)
    print(f"\n{args.detection_experiment} at {height}x{width}, batch 1, median of "
          f"{args.repeats} alternating rounds; {messages[0] if messages else ''}")
    print(f"  folded vs plain: {int(outputs['plain']['num_detections'][0])} detections, "
          f"{'same' if same else 'DIFFERENT'} counts and classes, boxes max|diff| "
          f"{box_diff:.2g} px")
    print(f"{'call':14s} {'plain ms':>9s} {'folded ms':>9s} {'fold/plain':>10s}")
    for kind in ("eager", "tf.function"):
        plain_ms, folded_ms = t[f"plain {kind}"] * 1e3, t[f"folded {kind}"] * 1e3
        print(f"{kind:14s} {plain_ms:>9.1f} {folded_ms:>9.1f} {folded_ms / plain_ms:>10.2f}",
              flush=True)


def agreement_section(args) -> None:
    """int8 vs fp32 agreement and speed on models with meaningful outputs."""
    import int8_agreement  # beside this script

    args.size = args.edge_size
    int8_agreement.run_all(args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--reference-python", "--timm-python", dest="reference_python",
                        default=".venv-ref/bin/python",
                        help="a Python with torch and timm (timm is skipped if it is absent)")
    parser.add_argument("--pairs", default=",".join(f"{a}:{b}" for a, b in PAIRS),
                        help="comma-separated ours:keras.applications pairs")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras part")
    parser.add_argument("--no-edge", action="store_true", help="skip TFLite/ONNX")
    parser.add_argument("--edge-size", type=int, default=224)
    parser.add_argument("--edge-skip", default="",
                        help="comma-separated parts of runner names to leave out (e.g. "
                             "'keras,default threads,int8'): fewer thread pools alternating")
    parser.add_argument("--edge-models", default="res2net50_26w_4s,ResNet50",
                        help="comma-separated models for the edge part (ResNet50: the control)")
    parser.add_argument("--edge-no-fold", action="store_true",
                        help="export the edge artifacts without folding BatchNorm")
    parser.add_argument("--calibration-size", type=int, default=32,
                        help="int8 calibration images (digits); latency does not depend on it")
    parser.add_argument("--no-agreement", action="store_true",
                        help="skip int8 agreement on models with meaningful outputs")
    parser.add_argument("--no-detection", action="store_true",
                        help="skip the detector's plain vs folded test-time latency")
    parser.add_argument("--detection-experiment", default="mask_rcnn_res2net50_fpn_synthetic")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import int8_agreement  # beside this script

    int8_agreement.add_arguments(parser)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    configure_threads(args.threads)
    import keras

    print(f"keras {keras.__version__} ({keras.backend.backend()}), {args.threads} threads, "
          f"median of {args.repeats} alternating rounds; {load()} on {os.cpu_count()} cores")
    timm = None
    if not args.no_keras and os.path.exists(args.reference_python):
        try:
            timm = TimmServer(args.reference_python, args.threads)
        except (OSError, RuntimeError, ValueError) as err:
            print(f"(timm not timed: {err})")
    elif not args.no_keras:
        print(f"(timm not timed: no {args.reference_python}; pass --reference-python)")
    try:
        if not args.no_keras:
            keras_section(args, timm)
    finally:
        if timm is not None:
            timm.close()
    if not args.no_edge:
        edge_section(args)
        if not args.no_agreement:
            agreement_section(args)
    if not args.no_detection:
        detection_section(args)
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
