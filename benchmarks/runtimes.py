"""Res2Net-50 on every CPU runtime, ours against the anchors, timed in one alternating run.

    python benchmarks/runtimes.py --anchors DIR [--batches 1,8] [--threads 2] [--repeats 15]
        [--skip NAME,...] [--output benchmarks/results/runtimes.json]

DIR holds the anchors, made outside the package by `tools/make_runtime_anchors.py` in its own
reference environments (tools/README.md): timm's `res2net50_26w_4s` with every BatchNorm
parameter randomised (`res2net50_26w_4s.safetensors`), its `torch.onnx.export` file, its
float64 logits on seeded images (`reference.npz`) and litert-torch's TFLite files of it.

Ours are built here from the same weights, BatchNorm folded, as `res2net-export` and `predict`
run them: Keras fp32 and bf16 (`keras_res2net.with_precision`), each a `tf.function`; LiteRT
fp32 and int8 (`export.tflite`; int8 calibrated on images drawn like the reference images);
onnxruntime (`export.onnx_file`, NHWC input as exported); OpenVINO f32 and bf16 (our IR,
`export.openvino_ir`, compiled with each INFERENCE_PRECISION_HINT). The anchors: timm's ONNX in
onnxruntime and in OpenVINO f32/bf16, and litert-torch's TFLite. Every runtime gets `--threads`
threads; each batch size is timed in rounds in which every runtime runs once, so machine noise
hits them alike (median per runtime). Accuracy: every runtime's logits on the reference images
against timm's float64 logits (max |diff| relative to max |logit|, top-1).

The goals (issue #27; figures, not tests): x86 best path (ours, any float runtime: int8 changes
the accuracy) <= 1.0x OpenVINO bf16 on timm's ONNX (and our IR against timm's, both in bf16);
onnxruntime: ours <= 1.0x timm's ONNX; LiteRT fp32: ours <= 1.0x litert-torch's; Keras bf16 <=
0.6x Keras fp32. Only same-run ratios on a quiet machine (`uptime` load below the core count)
mean something: the load at start and end is recorded.

Sections (`SECTIONS`): `res2net50` (above). A detector section (R2-101 Mask R-CNN at 1333x800,
Keras fp32/bf16 against mmdetection fp32) plugs in as another entry returning rows of the
same shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

NAME = "res2net50_26w_4s"
GOALS = (  # (name, runtime timed, anchor it is divided by, bound)
    ("x86 best path vs OpenVINO bf16 on timm's ONNX", "ours best", "openvino bf16 (timm onnx)",
     1.0),
    ("OpenVINO bf16: our IR vs timm's ONNX", "openvino bf16 (ours)", "openvino bf16 (timm onnx)",
     1.0),
    ("onnxruntime: ours vs timm's ONNX", "onnxruntime (ours)", "onnxruntime (timm onnx)", 1.0),
    ("LiteRT fp32: ours vs litert-torch", "litert fp32 (ours)", "litert (litert-torch)", 1.0),
    ("Keras bf16 vs Keras fp32", "keras bf16 (ours)", "keras fp32 (ours)", 0.6),
)


@dataclasses.dataclass
class Runtime:
    """One runtime of one model: `make(batch, start)` returns a callable on reference images
    start..start+batch, or None when this runtime has no artifact for that batch size
    (litert-torch's static shapes)."""

    name: str
    family: str  # keras, litert, onnxruntime, openvino
    ours: bool
    make: Callable[..., Callable[[], np.ndarray] | None]


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def configure_tensorflow(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def keras_runtimes(model, images: np.ndarray) -> list[Runtime]:
    import tensorflow as tf

    from keras_res2net.precision import with_precision

    def maker(net):
        forward = tf.function(lambda x: net(x, training=False))

        def make(batch, start=0):
            x = tf.constant(nhwc(images[start:start + batch]))
            return lambda: forward(x).numpy()

        return make

    return [Runtime("keras fp32 (ours)", "keras", True, maker(model)),
            Runtime("keras bf16 (ours)", "keras", True, maker(with_precision(model, "bf16")))]


def litert_maker(path: str, layout: Callable, threads: int, images: np.ndarray,
                 batches: dict[int, str] | None = None):
    """Batch -> callable on a LiteRT interpreter (`batches`: one static file per batch)."""
    from keras_res2net.export import tflite

    def make(batch, start=0):
        file = path if batches is None else batches.get(batch)
        if file is None or not os.path.exists(file):
            return None
        with tflite.quiet_tflite():
            interpreter = tflite.interpreter_class()(model_path=file, num_threads=threads)
            detail = interpreter.get_input_details()[0]
            if batches is None:
                interpreter.resize_tensor_input(detail["index"], (batch, *detail["shape"][1:]),
                                                strict=True)
            interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        output = interpreter.get_output_details()[0]["index"]
        x = layout(images[start:start + batch])

        def run():
            interpreter.set_tensor(index, x)
            interpreter.invoke()
            return interpreter.get_tensor(output)

        return run

    return make


def onnxruntime_maker(path: str, layout: Callable, threads: int, images: np.ndarray):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def make(batch, start=0):
        feed = {name: layout(images[start:start + batch])}
        return lambda: session.run(None, feed)[0]

    return make


def openvino_maker(path: str, precision: str, layout: Callable, threads: int,
                   images: np.ndarray):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads})
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if ran != precision:
        print(f"note: OpenVINO compiled {os.path.basename(path)} as {ran}, not {precision}")
    request = compiled.create_infer_request()

    def make(batch, start=0):
        x = layout(images[start:start + batch])

        def run():
            request.infer({0: x})
            return np.array(request.get_output_tensor(0).data)

        return run

    return make


def calibration_images(shape: tuple, seed: int, count: int = 64) -> np.ndarray:
    """int8 calibration images drawn as the reference images are (seeded N(0, 1) after
    normalisation, another seed), as the RGB values that `preprocess_input` maps to them."""
    from keras_res2net.imagenet import IMAGENET_MEAN, IMAGENET_STD

    normalised = np.random.default_rng(seed).standard_normal((count, *shape[2:], shape[1]))
    return (normalised * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0


def our_artifacts(model, folder: str, calibration: np.ndarray, skip: set[str]) -> dict[str, str]:
    """Our ONNX, IR and TFLite files of `model` (folded), written as res2net-export does;
    only those that a runtime not in `skip` needs."""
    import contextlib
    import io

    from keras_res2net.export import onnx_file, openvino_ir, source, tflite

    with contextlib.redirect_stdout(io.StringIO()):
        serving = source.serving_model(model)
    needed = {"onnx": ["onnxruntime (ours)"],
              "openvino": ["openvino f32 (ours)", "openvino bf16 (ours)"],
              "tflite fp32": ["litert fp32 (ours)"], "tflite int8": ["litert int8 (ours)"]}
    wanted = {kind for kind, users in needed.items() if set(users) - skip}
    paths = {}
    if "onnx" in wanted:
        paths["onnx"] = os.path.join(folder, "ours.onnx")
        onnx_file.write_onnx(serving, paths["onnx"])
    if "openvino" in wanted:
        openvino_ir.write_classifier(serving, os.path.join(folder, "ours_openvino"))
        paths["openvino"] = openvino_ir.ir_path(os.path.join(folder, "ours_openvino"))
    for quantize in ("fp32", "int8"):
        if f"tflite {quantize}" in wanted:
            paths[f"tflite {quantize}"] = os.path.join(folder, f"ours_{quantize}.tflite")
            with open(paths[f"tflite {quantize}"], "wb") as handle:
                handle.write(tflite.convert(serving, None if quantize == "fp32" else "int8",
                                            calibration))
    return paths


def res2net50_section(args, skip: set[str]) -> dict:
    """Rows for Res2Net-50: accuracy against timm's float64 logits, medians per batch."""
    import keras_res2net
    from keras_res2net.fold import fold_batchnorm

    anchors = args.anchors
    reference = np.load(os.path.join(anchors, "reference.npz"))
    images, logits = reference["images"], reference["logits"]
    model = keras_res2net.create_model(NAME, weights=os.path.join(anchors, f"{NAME}.safetensors"),
                                       classifier_activation=None)
    model = fold_batchnorm(model, log=lambda _: None)
    calibration = calibration_images(images.shape, seed=1)
    folder = tempfile.mkdtemp(prefix="res2net-runtimes-")
    print("writing our artifacts ...", flush=True)
    ours = our_artifacts(model, folder, calibration, skip)
    timm_onnx = os.path.join(anchors, "timm_res2net50.onnx")
    litert_torch = {batch: os.path.join(anchors, f"litert_torch_res2net50_b{batch}.tflite")
                    for batch in (*args.batches, len(images))}
    t = args.threads
    nchw = np.ascontiguousarray
    makers = {  # name -> (family, ours, maker factory): built only if not skipped
        "litert fp32 (ours)": ("litert", True,
                               lambda: litert_maker(ours["tflite fp32"], nhwc, t, images)),
        "litert int8 (ours)": ("litert", True,
                               lambda: litert_maker(ours["tflite int8"], nhwc, t, images)),
        "onnxruntime (ours)": ("onnxruntime", True,
                               lambda: onnxruntime_maker(ours["onnx"], nhwc, t, images)),
        "openvino f32 (ours)": ("openvino", True, lambda: openvino_maker(
            ours["openvino"], "f32", nhwc, t, images)),
        "openvino bf16 (ours)": ("openvino", True, lambda: openvino_maker(
            ours["openvino"], "bf16", nhwc, t, images)),
        "onnxruntime (timm onnx)": ("onnxruntime", False,
                                    lambda: onnxruntime_maker(timm_onnx, nchw, t, images)),
        "openvino f32 (timm onnx)": ("openvino", False, lambda: openvino_maker(
            timm_onnx, "f32", nchw, t, images)),
        "openvino bf16 (timm onnx)": ("openvino", False, lambda: openvino_maker(
            timm_onnx, "bf16", nchw, t, images)),
        "litert (litert-torch)": ("litert", False, lambda: litert_maker(
            None, nchw, t, images, batches=litert_torch)),
    }
    runtimes = [r for r in keras_runtimes(model, images) if r.name not in skip] + [
        Runtime(name, family, is_ours, factory())
        for name, (family, is_ours, factory) in makers.items() if name not in skip]
    rows = {r.name: {"family": r.family, "ours": r.ours} for r in runtimes}
    scale = float(np.max(np.abs(logits)))
    for r in runtimes:  # accuracy on every reference image (static batch-1 files: one by one)
        run = r.make(len(images))
        if run is None and r.make(1) is None:
            continue
        out = run() if run is not None else np.concatenate(
            [r.make(1, i)() for i in range(len(images))])
        out = np.asarray(out, dtype=np.float64)
        rows[r.name]["max_abs_diff_rel"] = float(np.max(np.abs(out - logits)) / scale)
        rows[r.name]["top1_agreement"] = float(np.mean(out.argmax(-1) == logits.argmax(-1)))
    for batch in args.batches:
        calls = {r.name: r.make(batch) for r in runtimes}
        calls = {name: call for name, call in calls.items() if call is not None}
        for call in calls.values():  # warm up
            call()
            call()
        samples = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
        for name, times in samples.items():
            rows[name][f"batch{batch}_ms"] = statistics.median(times) * 1e3
        print(f"batch {batch} timed ({args.repeats} rounds), load {load()}", flush=True)
    return {"model": NAME, "images": len(images), "logits_max_abs": scale, "rows": rows,
            "goals": goals(rows, args.batches)}


def goals(rows: dict, batches: list[int]) -> list[dict]:
    """Each goal's ratio per batch size (None where a runtime was skipped or missing)."""
    found = []
    for name, timed, anchor, bound in GOALS:
        for batch in batches:
            key = f"batch{batch}_ms"
            if timed == "ours best":
                ours = {n: row[key] for n, row in rows.items()  # float paths: int8 is
                        if row["ours"] and key in row and "int8" not in n}  # another accuracy
                best = min(ours, key=ours.get) if ours else None
                value, which = (ours[best], best) if best else (None, None)
            else:
                value, which = rows.get(timed, {}).get(key), timed
            base = rows.get(anchor, {}).get(key)
            ratio = value / base if value and base else None
            found.append({"goal": name, "batch": batch, "runtime": which, "anchor": anchor,
                          "ratio": ratio, "bound": bound,
                          "met": None if ratio is None else ratio <= bound})
    return found


SECTIONS = {"res2net50": res2net50_section}


def versions(anchors: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "onnxruntime", "openvino", "tf2onnx",
                    "ai-edge-litert", "onnx"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    manifest = os.path.join(anchors, "anchors.json")
    if os.path.exists(manifest):
        with open(manifest) as handle:
            found["anchors"] = json.load(handle)
    return found


def machine() -> dict:
    from keras_res2net.precision import cpu_flags

    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), "")
    except OSError:
        pass
    flags = cpu_flags() or set()
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert"})}


def print_table(section: str, result: dict, batches: list[int]) -> None:
    rows = result["rows"]
    print(f"\n{section}: {result['model']}, logits vs timm float64 on {result['images']} images")
    header = f"{'runtime':28s} {'rel|diff|':>9s} {'top-1':>6s}" + "".join(
        f" {f'b{b} ms':>9s}" for b in batches)
    print(header)
    for name, row in rows.items():
        diff = row.get("max_abs_diff_rel")
        text = f"{name:28s} {diff if diff is None else format(diff, '9.1e'):>9} " \
               f"{format(row['top1_agreement'], '6.0%') if 'top1_agreement' in row else '-':>6}"
        for batch in batches:
            value = row.get(f"batch{batch}_ms")
            text += f" {'-' if value is None else format(value, '9.1f'):>9}"
        print(text)
    for goal in result["goals"]:
        ratio = "-" if goal["ratio"] is None else f"{goal['ratio']:.2f}x"
        met = {None: "n/a", True: "met", False: "MISSED"}[goal["met"]]
        print(f"  goal {goal['goal']} (batch {goal['batch']}): {goal['runtime']} {ratio} "
              f"(bound {goal['bound']}x) {met}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", required=True,
                        help="tools/make_runtime_anchors.py's output folder")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sections", default="res2net50", help=", ".join(SECTIONS))
    parser.add_argument("--skip", default="", help="runtime names to leave out, comma-separated")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                         "runtimes.json"))
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    for path in ("reference.npz", f"{NAME}.safetensors", "timm_res2net50.onnx"):
        if not os.path.exists(os.path.join(args.anchors, path)):
            print(f"runtimes.py: error: --anchors {args.anchors} has no {path}: run "
                  "tools/make_runtime_anchors.py (tools/README.md).", file=sys.stderr)
            return 2
    configure_tensorflow(args.threads)
    start_load, started = load(), time.time()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    record = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "threads": args.threads, "repeats": args.repeats, "batches": args.batches,
              "machine": machine(), "versions": versions(args.anchors),
              "load": {"uptime_at_start": uptime, "start": start_load}, "sections": {}}
    for section in args.sections.split(","):
        result = SECTIONS[section](args, {s for s in args.skip.split(",") if s})
        record["sections"][section] = result
        print_table(section, result, args.batches)
    record["load"]["end"] = load()
    record["seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(record, handle, indent=2)
    print(f"\nload average {start_load} -> {record['load']['end']} on {os.cpu_count()} cores; "
          f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
