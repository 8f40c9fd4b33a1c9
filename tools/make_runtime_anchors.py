"""The anchors of `benchmarks/runtimes.py`: what a PyTorch user ships of timm's Res2Net-50.

Run in reference environments outside the package (never imported by it; see tools/README.md):

    /work/refenv/timm/bin/python tools/make_runtime_anchors.py timm --out DIR
    /work/refenv/litert/bin/python tools/make_runtime_anchors.py litert --out DIR

`timm` (torch, timm, onnx, onnxscript) writes into DIR:
- `res2net50_26w_4s.safetensors`: timm's `res2net50_26w_4s` at its own seeded init
  (`torch.manual_seed(SEED)`) with EVERY BatchNorm parameter then drawn at random (gamma,
  beta, running mean and variance). timm zero-initialises the last BatchNorm gamma of each
  block, which leaves every residual branch dead: a runtime (or converter) that drops them
  would look fast and still "agree". Our Keras model loads this file as timm weights.
- `timm_res2net50.onnx`: `torch.onnx.export` of that model (dynamic batch, opset 18, the
  exporter's defaults otherwise): what onnxruntime and OpenVINO users run.
- `reference.npz`: `images` (N, 3, 224, 224) float32 (normalised, seeded) and `logits` (N,
  1000) float64 from the same model in float64 (the exact answer every runtime approximates).
- `anchors.json`: versions and what was written.

`litert` (torch, timm, litert-torch) reads the safetensors file and writes
`litert_torch_res2net50_b{1,8}.tflite`: litert-torch's conversion of the same model at batch 1
and 8 (it traces static shapes), and adds its versions to `anchors.json`.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import timm
import torch

NAME = "res2net50_26w_4s"
SEED = 0
IMAGES = 8
SIZE = 224
OPSET = 18
BATCHES = (1, 8)


def randomise_batchnorm(model: torch.nn.Module, seed: int) -> int:
    """Draw every BatchNorm's gamma, beta, running mean and variance; return how many."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            shape = module.weight.shape
            with torch.no_grad():
                module.weight.copy_(torch.rand(shape, generator=generator) * 0.6 + 0.4)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
            count += 1
    return count


def build(weights: str | None = None) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = timm.create_model(NAME, pretrained=False).eval()
    if weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights))
    return model


def update_manifest(out: str, **entries) -> None:
    path = os.path.join(out, "anchors.json")
    manifest = {}
    if os.path.exists(path):
        with open(path) as handle:
            manifest = json.load(handle)
    manifest.update(entries)
    with open(path, "w") as handle:
        json.dump(manifest, handle, indent=2)


def make_timm(out: str) -> None:
    import onnx
    from safetensors.torch import save_file

    model = build()
    count = randomise_batchnorm(model, SEED + 1)
    weights = os.path.join(out, f"{NAME}.safetensors")
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, weights)
    images = np.random.default_rng(SEED).standard_normal((IMAGES, 3, SIZE, SIZE)).astype(
        np.float32)
    with torch.no_grad():
        logits = model.double()(torch.from_numpy(images).double()).numpy()
        model.float()
    np.savez(os.path.join(out, "reference.npz"), images=images, logits=logits)
    onnx_path = os.path.join(out, "timm_res2net50.onnx")
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (torch.from_numpy(images[:1]),), onnx_path, opset_version=OPSET,
                      input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": {0: batch}}, external_data=False)
    onnx.checker.check_model(onnx_path)
    update_manifest(out, timm={
        "torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__,
        "model": NAME, "seed": SEED, "batchnorms_randomised": count, "opset": OPSET,
        "logits_max_abs": float(np.abs(logits).max()),
        "files": [os.path.basename(p) for p in (weights, onnx_path)] + ["reference.npz"]})
    print(f"{NAME}: {count} BatchNorms randomised; max |logit| {np.abs(logits).max():.2f}; "
          f"wrote {weights}, {onnx_path} and reference.npz")


def make_litert(out: str) -> None:
    import litert_torch

    model = build(os.path.join(out, f"{NAME}.safetensors"))
    files = []
    for batch in BATCHES:
        sample = (torch.zeros(batch, 3, SIZE, SIZE),)
        path = os.path.join(out, f"litert_torch_res2net50_b{batch}.tflite")
        litert_torch.convert(model, sample).export(path)
        files.append(os.path.basename(path))
        print(f"wrote {path}")
    from importlib.metadata import version

    update_manifest(out, litert={"torch": torch.__version__, "timm": timm.__version__,
                                 "litert-torch": version("litert-torch"), "files": files})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("timm", "litert"))
    parser.add_argument("--out", required=True, help="folder for the anchors' files")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    (make_timm if args.part == "timm" else make_litert)(args.out)


if __name__ == "__main__":
    main()
