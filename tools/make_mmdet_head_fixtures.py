"""Produce tests/fixtures/mmdet/heads.npz: mmdetection's own detector heads on seeded weights.

Run with mmdetection 3.x importable (torch, mmengine, mmcv or mmcv-lite, mmdet):
`python tools/make_mmdet_head_fixtures.py`. CI never runs this: tests/detection/
test_mmdet_heads.py checks the Keras heads, filled through the converter's key mapping, against
the committed outputs.

What it writes: small FPN, RPNHead, Shared2FCBBoxHead (class-specific and class-agnostic),
FCNMaskHead, HTCMaskHead (with `conv_res`) and FusedSemanticHead modules built from
mmdetection's registry, their state dicts' key/shape manifest (weights are not stored: both
sides draw them with `tests/reference_data.seeded_parameters`), the inputs, and the outputs
computed in float64. Only the heads run, so no compiled mmcv op is needed; with mmcv-lite
(no `mmcv._ext`) a stub module is registered so that `mmdet.models` imports.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys
import types

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference_data import seeded_parameters  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "mmdet" / "heads.npz"
SEED = 3
CLASSES, CHANNELS, FC_DIM, SEMANTIC_CLASSES = 5, 16, 32, 7
BACKBONE_CHANNELS = (8, 16, 32, 64)
P2_SIZE = (16, 24)  # P3..P5 halve it exactly, as for padded images
BOX_ROIS, MASK_ROIS, MASK_IN = 4, 3, 7
CODER = dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2])
MODULES = {  # state-dict prefix in a detector -> mmdetection config
    "neck": dict(type="FPN", in_channels=list(BACKBONE_CHANNELS), out_channels=CHANNELS,
                 num_outs=5),
    "rpn_head": dict(type="RPNHead", in_channels=CHANNELS, feat_channels=CHANNELS,
                     anchor_generator=dict(type="AnchorGenerator", scales=[8],
                                           ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
                     bbox_coder=dict(CODER, target_stds=[1.0] * 4)),
    "roi_head.bbox_head": dict(type="Shared2FCBBoxHead", in_channels=CHANNELS,
                               fc_out_channels=FC_DIM, roi_feat_size=7, num_classes=CLASSES,
                               bbox_coder=CODER, reg_class_agnostic=False),
    "roi_head.bbox_head.0": dict(type="Shared2FCBBoxHead", in_channels=CHANNELS,
                                 fc_out_channels=FC_DIM, roi_feat_size=7, num_classes=CLASSES,
                                 bbox_coder=CODER, reg_class_agnostic=True),
    "roi_head.mask_head": dict(type="FCNMaskHead", num_convs=4, in_channels=CHANNELS,
                               conv_out_channels=CHANNELS, num_classes=CLASSES),
    "roi_head.mask_head.1": dict(type="HTCMaskHead", with_conv_res=True, num_convs=4,
                                 in_channels=CHANNELS, conv_out_channels=CHANNELS,
                                 num_classes=CLASSES),
    "roi_head.semantic_head": dict(type="FusedSemanticHead", num_ins=5, fusion_level=1,
                                   num_convs=4, in_channels=CHANNELS,
                                   conv_out_channels=CHANNELS, num_classes=SEMANTIC_CLASSES),
}


def _stub_mmcv_ext() -> None:
    """mmcv-lite has no compiled `mmcv._ext`; `mmcv.ops` only checks that names exist."""
    try:
        importlib.import_module("mmcv._ext")
        return
    except ImportError:
        pass
    stub = types.ModuleType("mmcv._ext")

    def missing(name):
        if name.startswith("__"):  # __file__, __path__, ...: a plain module has none
            raise AttributeError(name)

        def call(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name} is a stub (the heads do not need it)")
        return call

    stub.__getattr__ = missing
    sys.modules["mmcv._ext"] = stub


def main() -> None:
    _stub_mmcv_ext()
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(SEED)
    arrays, shapes = {}, {}

    def tensor(name, shape):
        value = rng.standard_normal(shape).astype(np.float32)
        arrays[f"in:{name}"] = value
        return torch.from_numpy(value.astype(np.float64))

    modules = {}
    for prefix, config in MODULES.items():
        module = MODELS.build(config).eval().double()
        state = {f"{prefix}.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
        shapes.update(state)
        weights = seeded_parameters(state, SEED)
        module.load_state_dict({k[len(prefix) + 1:]: torch.from_numpy(v.astype(np.float64))
                                for k, v in weights.items()})
        modules[prefix] = module

    height, width = P2_SIZE
    backbone = [tensor(f"neck.{i}", (1, c, height >> i, width >> i))
                for i, c in enumerate(BACKBONE_CHANNELS)]
    pyramid = modules["neck"](tuple(backbone))
    scores, deltas = modules["rpn_head"](tuple(pyramid))
    for i in range(5):
        arrays[f"out:neck.{i}"] = pyramid[i].numpy()
        arrays[f"out:rpn_cls.{i}"] = scores[i].numpy()
        arrays[f"out:rpn_reg.{i}"] = deltas[i].numpy()
    for prefix in ("roi_head.bbox_head", "roi_head.bbox_head.0"):
        cls, reg = modules[prefix](tensor(prefix, (BOX_ROIS, CHANNELS, 7, 7)))
        arrays[f"out:{prefix}.cls"], arrays[f"out:{prefix}.reg"] = cls.numpy(), reg.numpy()
    rois = tensor("roi_head.mask_head", (MASK_ROIS, CHANNELS, MASK_IN, MASK_IN))
    arrays["out:roi_head.mask_head"] = modules["roi_head.mask_head"](rois).numpy()
    residual = tensor("roi_head.mask_head.1.res", (MASK_ROIS, CHANNELS, MASK_IN, MASK_IN))
    logits, features = modules["roi_head.mask_head.1"](rois, residual)
    arrays["out:roi_head.mask_head.1"] = logits.numpy()
    arrays["out:roi_head.mask_head.1.features"] = features.numpy()
    logits, embedding = modules["roi_head.semantic_head"](tuple(pyramid))
    arrays["out:roi_head.semantic_head.logits"] = logits.numpy()
    arrays["out:roi_head.semantic_head.embedding"] = embedding.numpy()

    import mmdet

    meta = {"seed": SEED, "key_shapes": shapes, "mmdet_version": mmdet.__version__,
            "torch_version": torch.__version__, "classes": CLASSES, "channels": CHANNELS,
            "fc_dim": FC_DIM, "semantic_classes": SEMANTIC_CLASSES}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, meta=json.dumps(meta), **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB, {len(arrays)} arrays, "
          f"mmdet {mmdet.__version__})")


if __name__ == "__main__":
    main()
