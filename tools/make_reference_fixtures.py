"""Produce the reference fixtures in tests/fixtures/reference/ from timm (PyTorch).

Run: `make fixtures` (creates .venv-ref with torch 2.14.1, torchvision 0.29.1, timm, safetensors;
about 5.5 GB) or, with such an environment at hand, `.venv-ref/bin/python
tools/make_reference_fixtures.py`. CI never runs this: it checks the committed outputs.

What it writes:
- `<config>.npz` for reduced-depth (and a few full-depth) configs: the state dict's key/shape
  manifest, BatchNorm running statistics measured by PyTorch on random images, and the
  reference's outputs (logits, or projected P2..P5 features for the mmdetection-style
  backbone) at 224x224 and at an odd size, computed in float64 (the exact answer the float32
  implementations both approximate), plus how far the reference's own float32 run is from it
  (`reference_fp32_error`): for full-size DLA-60 that noise floor is above 1e-4. Trainable
  weights are not stored: both sides regenerate them from `tests/reference_data.py` (seeded NumPy).
- `manifests.json`: key names, shapes and parameter counts of every full-size variant.
- `provenance.json`: the NumPy version and the sha256 of each fixture's seeded weights and
  images (NumPy's `default_rng` streams may change between versions).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import timm
import torch
from timm.models.res2net import Bottle2neck
from timm.models.resnet import ResNet

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference_data import (  # noqa: E402
    CALIBRATION_BATCHES,
    PROVENANCE,
    fixture_digests,
    projection,
    seeded_images,
    seeded_parameters,
)

OUT = ROOT / "tests" / "fixtures" / "reference"
REDUCED = [2, 1, 1, 1]  # layer1 has a normal block; every stage has its stage block
DLA_REDUCED = [1, 1, 1, 2, 1, 1]  # keeps one two-level tree (level3) with its level root
ODD_SIZE = (193, 257)
DLA_ODD_SIZE = (160, 288)  # DLA needs multiples of 32 (its branches disagree otherwise)

# Full-size variants not registered in timm are built with timm's ResNet + Bottle2neck,
# exactly as timm builds res2net50d / res2net101d (official res2net_v1b.py keys and layers).
V1B_ARGS = dict(block=Bottle2neck, base_width=26, stem_type="deep", avg_down=True,
                stem_width=32, block_args=dict(scale=4))


def build(timm_name: str, **overrides) -> torch.nn.Module:
    if timm_name == "res2net152_v1b_26w_4s":
        return ResNet(layers=[3, 8, 36, 3], **V1B_ARGS)
    if timm_name == "res2net200_v1b_26w_4s":
        return ResNet(layers=[3, 12, 48, 3], **V1B_ARGS)
    return timm.create_model(timm_name, pretrained=False, **overrides)


FULL_SIZE = {  # our name -> timm name
    "res2net50_48w_2s": "res2net50_48w_2s",
    "res2net50_26w_4s": "res2net50_26w_4s",
    "res2net50_14w_8s": "res2net50_14w_8s",
    "res2net50_26w_6s": "res2net50_26w_6s",
    "res2net50_26w_8s": "res2net50_26w_8s",
    "res2net101_26w_4s": "res2net101_26w_4s",
    "res2next50": "res2next50",
    "res2net50_v1b_26w_4s": "res2net50d",
    "res2net101_v1b_26w_4s": "res2net101d",
    "res2net152_v1b_26w_4s": "res2net152_v1b_26w_4s",
    "res2net200_v1b_26w_4s": "res2net200_v1b_26w_4s",
    "dla60_res2net": "dla60_res2net",
    "dla60_res2next": "dla60_res2next",
}

# fixture name -> (our variant, timm name, layers override or None, kind)
NUMBER_CONFIGS = {
    "res2net50_48w_2s_reduced": ("res2net50_48w_2s", "res2net50_48w_2s", REDUCED, "logits"),
    "res2net50_26w_4s_reduced": ("res2net50_26w_4s", "res2net50_26w_4s", REDUCED, "logits"),
    "res2net50_14w_8s_reduced": ("res2net50_14w_8s", "res2net50_14w_8s", REDUCED, "logits"),
    "res2net50_26w_6s_reduced": ("res2net50_26w_6s", "res2net50_26w_6s", REDUCED, "logits"),
    "res2net50_26w_8s_reduced": ("res2net50_26w_8s", "res2net50_26w_8s", REDUCED, "logits"),
    "res2next50_reduced": ("res2next50", "res2next50", REDUCED, "logits"),
    "res2net_v1b_26w_4s_reduced": ("res2net50_v1b_26w_4s", "res2net50d", REDUCED, "logits"),
    "res2net50_26w_4s_full": ("res2net50_26w_4s", "res2net50_26w_4s", None, "logits"),
    "dla60_res2net_full": ("dla60_res2net", "dla60_res2net", None, "logits"),
    "dla60_res2next_full": ("dla60_res2next", "dla60_res2next", None, "logits"),
    "dla60_res2net_reduced": ("dla60_res2net", "dla60_res2net", DLA_REDUCED, "logits"),
    "dla60_res2next_reduced": ("dla60_res2next", "dla60_res2next", DLA_REDUCED, "logits"),
    "mmdet_res2net_v1b_reduced": ("res2net50_v1b_26w_4s", "res2net50d", REDUCED, "mmdet"),
}

MMDET_STEM = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3",
              "conv1.4": "stem.4", "conv1.6": "stem.6", "bn1": "stem.7"}


def to_mmdet_key(key: str) -> str:
    """Official v1b key -> mmdetection Res2Net backbone key (inside a detector)."""
    for ours, theirs in MMDET_STEM.items():
        if key.startswith(ours + "."):
            key = theirs + key[len(ours):]
            break
    return "backbone." + key


def shapes_of(model: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in model.state_dict().items()
            if not key.endswith("num_batches_tracked")}


def randomize_and_calibrate(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights, then BatchNorm statistics measured on random images (cumulative)."""
    params = seeded_parameters(shapes_of(model), seed)
    state = model.state_dict()
    for key, value in params.items():
        state[key] = torch.from_numpy(value)
    model.load_state_dict(state)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for batch in range(CALIBRATION_BATCHES):
            images = seeded_images(8, 224, 224, seed=1000 + batch)
            model(torch.from_numpy(images).permute(0, 3, 1, 2))
    model.eval()


def pyramid(model, images: torch.Tensor) -> dict[str, np.ndarray]:
    x = model.maxpool(model.act1(model.bn1(model.conv1(images))))
    features = {}
    for level, stage in zip(("P2", "P3", "P4", "P5"),
                            (model.layer1, model.layer2, model.layer3, model.layer4),
                            strict=True):
        x = stage(x)
        features[level] = x.permute(0, 2, 3, 1).double().numpy()
    return features


def run(model, images: torch.Tensor, kind: str) -> dict[str, np.ndarray]:
    """Logits (key "") or, for a backbone, P2..P5 summarised by a fixed projection."""
    if kind != "mmdet":
        return {"": model(images).double().numpy()}
    return {level: feature.astype(np.float64) @ projection(feature.shape[-1]).astype(np.float64)
            for level, feature in pyramid(model, images).items()}


def make_numbers_fixture(name: str, variant: str, timm_name: str, layers, kind: str) -> None:
    torch.manual_seed(0)
    key = "levels" if variant.startswith("dla") else "layers"
    model = build(timm_name, **({key: layers} if layers else {}))
    if kind == "mmdet":
        # mmdetection's Res2Net skips the stage pool when the stage block has stride 1.
        model.layer1[0].pool = torch.nn.Identity()
    randomize_and_calibrate(model, seed=0)
    arrays, fp32_error = {}, {}
    sizes = [(224, 224), DLA_ODD_SIZE if variant.startswith("dla") else ODD_SIZE]
    with torch.no_grad():
        for height, width in sizes:
            images = torch.from_numpy(seeded_images(2, height, width)).permute(0, 3, 1, 2)
            outputs = {}
            for dtype in (torch.float32, torch.float64):
                model.to(dtype)
                outputs[dtype] = run(model, images.to(dtype), kind)
            model.float()
            fp32_error[f"{height}x{width}"] = max(
                float(np.abs(outputs[torch.float32][k] - outputs[torch.float64][k]).max())
                for k in outputs[torch.float64])
            for level, value in outputs[torch.float64].items():
                # float32 storage of the float64 answer: rounding adds ~1e-7.
                arrays[f"out:{height}x{width}" + (f":{level}" if level else "")] = (
                    value.astype(np.float32))
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            arrays[f"stat:{key}"] = value.numpy()
    meta = dict(variant=variant, layers=layers, kind=kind, timm_name=timm_name,
                sizes=sizes, reference_fp32_error=fp32_error, torch=torch.__version__,
                timm=timm.__version__, numpy=np.__version__, seed=0, key_shapes=shapes_of(model))
    if kind == "mmdet":
        meta["key_map"] = {key: to_mmdet_key(key) for key in meta["key_shapes"]
                           if not key.startswith("fc.")}
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(OUT / f"{name}.npz", **arrays)
    scale = max(float(np.abs(v).max()) for k, v in arrays.items() if k.startswith("out:"))
    print(f"{name:32s} {kind:6s} max |output| {scale:8.3f}  reference fp32 vs fp64 "
          + ", ".join(f"{size}: {err:.1e}" for size, err in fp32_error.items()), flush=True)


def make_manifests() -> None:
    manifests = {}
    for ours, timm_name in FULL_SIZE.items():
        model = build(timm_name)
        params = sum(p.numel() for p in model.parameters())
        manifests[ours] = {"timm_name": timm_name, "params": params, "keys": shapes_of(model)}
        print(f"manifest {ours:24s} {params:>12,d} params {len(manifests[ours]['keys'])} keys",
              flush=True)
    (OUT / "manifests.json").write_text(json.dumps(manifests, separators=(",", ":")))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, timm {timm.__version__}")
    make_manifests()
    for name, config in NUMBER_CONFIGS.items():
        make_numbers_fixture(name, *config)
    write_provenance()


def write_provenance() -> None:
    """NumPy does not promise `default_rng` streams across versions: record which NumPy drew
    the seeded weights and images and their sha256, so that tests/models/
    test_reference_provenance.py fails loudly, not as a parity mismatch, if they change."""
    import datetime

    PROVENANCE.write_text(json.dumps({
        "recorded_with": {"numpy": np.__version__, "date": datetime.date.today().isoformat()},
        "fixtures": {name: fixture_digests(name) for name in NUMBER_CONFIGS}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
