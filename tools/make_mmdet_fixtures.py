"""Reference fixtures from mmdetection 3.3 for the five published Res2Net detectors.

Run: ``make fixtures-mmdet`` (creates ``.venv-mmdet`` with torch 2.14.1, torchvision 0.29.1,
mmcv-lite 2.1.0, mmengine 0.10.7, mmdet 3.3.0) or, in such an environment,
``python tools/make_mmdet_fixtures.py [--configs NAME ...]``. CI never runs this: the tests
check the committed outputs. mmcv's compiled kernels come from ``tools/mmdet_shim.py``.

For each config (``faster_rcnn``, ``mask_rcnn``, ``cascade_rcnn``, ``cascade_mask_rcnn``,
``htc``: the ``*_res2net-101_fpn_*`` configs shipped in the mmdet wheel) the tool

1. builds the model from the config, with a reduced backbone by default (``--depth 14``: one
   Bottle2neck per stage, registered in ``Res2Net.arch_settings``; base width 26, scale 4,
   deep stem and average-pool downsampling as published) and the heads at their published
   sizes (FPN 256, fc 1024, 80 classes, HTC's 183 semantic classes);
2. loads weights drawn from key names and shapes by ``tests/mmdet_weights.py``
   (``seeded_state_dict``), calibrates BatchNorm running statistics with train-mode backbone
   passes over generated images (cumulative average), then divides each FPN lateral weight by
   the std of the backbone level it reads; asserts that ``rebuild_state_dict`` (what the tests
   do) reproduces the model's state dict bit-for-bit;
3. runs mmdetection's own test path (the config's test pipeline with the Resize scale set to
   ``--scale``, ``pseudo_collate``, ``model.test_step``) on two generated RGB images of mixed
   orientation as one batch, recording intermediates with forward hooks;
4. writes ``<out>/<config>.npz`` (``np.savez_compressed``) and ``<out>/<config>.json``.

``--depth 101 --scale 1333x800 --out DIR --configs mask_rcnn htc`` writes full-size R2-101
fixtures at the published test scale (not committed; about 6 s per image per config).

npz keys (the same scheme in all five files; ``i`` image 0/1, ``l`` level, ``s`` stage)
------------------------------------------------------------------------------------
Images, RGB uint8, HWC:
  ``img{i}.original``   (H, W, 3) the generated image (mmdetection is fed its BGR copy)
  ``img{i}.resized``    (h, w, 3) after Resize, exactly as fed: the network input of image i
                        is ``((resized - mean) / std)`` in float32, CHW, zero-padded at the
                        bottom/right to ``batch_input_shape`` (asserted to 1e-6 here)
Probes of large float tensors ``T`` (NCHW, as mmdetection lays them out):
  ``T.shape`` int64 (ndim,); ``T.idx`` int64 (k,) sorted flat C-order indices (k = min(2048,
  size), fixed per T); ``T.val`` float32 (k,) values there; ``T.stats`` float64 (3,) =
  [mean, std, max |x|] over the whole tensor (batch padding included).
  T in: ``backbone.{l}`` l=0..3 (C2..C5), ``neck.{l}`` l=0..4 (P2..P6),
  ``rpn.cls_score.{l}`` / ``rpn.bbox_pred.{l}`` l=0..4 (raw RPN head outputs),
  ``bbox{s}.head_input`` (RoI features fed to the stage-s box head: RoIAlign output, plus
  for HTC the pooled semantic feature), ``mask{s}.head_input`` (same for the mask heads),
  HTC only: ``semantic.pred`` (1, 183 classes) and ``semantic.feat`` (semantic head outputs).
RPN proposals after NMS, all of them, resized-image pixels:
  ``rpn.proposals{i}.bboxes`` float32 (n_i, 4) xyxy; ``rpn.proposals{i}.scores`` (n_i,)
Box heads, one entry per stage s (0 for Faster/Mask R-CNN, 0..2 for cascades and HTC):
  ``bbox{s}.rois``      float32 (R, 5) [batch index, x1, y1, x2, y2] as mmdetection passes
                        them to the RoI extractor (resized-image pixels), both images
  ``bbox{s}.rows``      int64 (r,) rows of ``rois`` kept below: the first 128 of each image
  ``bbox{s}.cls_score`` float32 (r, 81) logits (80 classes + background last)
  ``bbox{s}.bbox_pred`` float32 (r, 320) class-specific (Faster/Mask) or (r, 4)
                        class-agnostic (cascade/HTC stages) encoded deltas
Mask heads (mask models), on the final detections:
  ``mask.rois``         float32 (D, 5) the final boxes as RoIs (resized-image pixels), both
                        images, in detection order
  ``mask{s}.rows``      int64 (m,) rows of ``mask.rois`` kept below: first 32 of each image
  ``mask{s}.mask_pred`` float32 (m, 28, 28) logits of the predicted label's channel, stage s
                        (Mask R-CNN s=0; cascade mask and HTC s=0..2). Final masks: Cascade
                        Mask R-CNN averages the three stages' sigmoids; HTC runs all three
                        (mask information flow) but mmdetection 3.3 keeps the last alone
Final detections (``model.test_step``'s output), original-image pixels:
  ``det{i}.bboxes`` float32 (n, 4) xyxy; ``det{i}.scores`` float32 (n,); ``det{i}.labels``
  int64 (n,) 0-based COCO-80 indices; mask models: ``det{i}.masks`` uint8
  ``np.packbits(masks, axis=-1)`` of the (n, H, W) binary full-image masks (unpack with
  ``np.unpackbits(a, axis=-1, count=W).astype(bool)``).
Calibration (what ``rebuild_state_dict`` needs besides the manifest and seed):
  ``calib.<state key>`` every BatchNorm ``running_mean`` / ``running_var`` (float32) and
  ``num_batches_tracked`` (int64 scalar) as mmdetection measured them.

The json holds: config names, depth, seed, ``state_dict_shapes`` (the reduced model's
manifest), ``lateral_std`` (FPN lateral weight key -> divisor), ``weights`` (NumPy version,
``seeded_sha256``, ``state_sha256``), ``calibration`` (how), ``data_preprocessor`` (mean, std,
pad_size_divisor, bgr_to_rgb), ``test_scale``, ``test_cfg``, ``images`` (per image:
ori_shape, img_shape, pad_shape, batch_input_shape, scale_factor as mmdetection's (w, h),
num_dets, max_score), ``stages`` (box and mask stage indices present), ``versions``, timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time
import warnings
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
import mmdet_shim  # noqa: E402

mmdet_shim.install()

import torch  # noqa: E402
from mmdet_weights import (  # noqa: E402
    CALIB_PREFIX,
    MmdetFixture,
    apply_lateral_scales,
    rebuild_state_dict,
    seeded_state_dict,
    state_dict_sha256,
)

OUT = ROOT / "tests" / "fixtures" / "mmdet"
CONFIGS = {  # short name -> (mmdet 3.3 config in .mim/configs/res2net, published model name)
    "faster_rcnn": ("faster-rcnn_res2net-101_fpn_2x_coco.py", "faster_rcnn_r2_101_fpn_2x_coco"),
    "mask_rcnn": ("mask-rcnn_res2net-101_fpn_2x_coco.py", "mask_rcnn_r2_101_fpn_2x_coco"),
    "cascade_rcnn": ("cascade-rcnn_res2net-101_fpn_20e_coco.py",
                     "cascade_rcnn_r2_101_fpn_20e_coco"),
    "cascade_mask_rcnn": ("cascade-mask-rcnn_res2net-101_fpn_20e_coco.py",
                          "cascade_mask_rcnn_r2_101_fpn_20e_coco"),
    "htc": ("htc_res2net-101_fpn_20e_coco.py", "htc_r2_101_fpn_20e_coco"),
}
REDUCED_DEPTH = 14  # stem + 4 stages x 1 Bottle2neck x 3 convs + fc
IMAGE_SIZES = ((240, 360), (300, 200))  # (h, w): landscape and portrait, so padding matters
CALIBRATION = dict(batches=2, batch_size=2, size=(320, 480), seed_offset=1000)
N_PROBE = 2048
BOX_ROWS = 128  # head outputs kept for the first BOX_ROWS rois of each image
MASK_ROWS = 32  # mask logits kept for the first MASK_ROWS detections of each image
MIN_DETS = 20  # fewer detections per image than this means the seeded weights went wrong


def quiet() -> None:
    """Silence mmengine/mmdet's info logging and deprecation warnings."""
    warnings.filterwarnings("ignore")
    for name in ("mmengine", "mmdet"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.ERROR)


def register_reduced_depth() -> None:
    """Add depth 14 (one Bottle2neck per stage) to mmdetection's Res2Net."""
    from mmdet.models.backbones.res2net import Bottle2neck, Res2Net

    Res2Net.arch_settings = {**Res2Net.arch_settings, REDUCED_DEPTH: (Bottle2neck, (1, 1, 1, 1))}


def config_file(name: str) -> pathlib.Path:
    import mmdet

    return pathlib.Path(mmdet.__file__).parent / ".mim" / "configs" / "res2net" / CONFIGS[name][0]


def load_config(name: str, depth: int, scale: tuple[int, int]):
    """The wheel's config with the backbone depth and the test Resize scale (w, h) overridden."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_file(name)))
    cfg.model.backbone.depth = depth
    cfg.model.backbone.init_cfg = None  # nothing is downloaded: weights are seeded
    pipeline = []
    for step in cfg.test_pipeline:
        step = dict(step)
        if step["type"] == "LoadImageFromFile":
            step = dict(type="mmdet.LoadImageFromNDArray")
        elif step["type"] == "LoadAnnotations":
            continue
        elif step["type"] == "Resize":
            assert step.get("keep_ratio"), step
            step["scale"] = tuple(scale)
        pipeline.append(step)
    cfg.test_pipeline = pipeline
    return cfg


def build_model(cfg) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    quiet()
    return MODELS.build(cfg.model)


def make_images(seed: int, sizes) -> list[np.ndarray]:
    """Deterministic RGB uint8 images: a mosaic of flat tiles under filled and striped shapes.

    Flat regions and exact edges, no noise or gradients: the images and their resized copies
    are stored in the fixtures, and only such content compresses (40 kB for both images and
    both resized copies, against 500 kB with a smooth noisy background). Stripes (2-4 px)
    give the high frequencies, shape boundaries the objects.
    """
    rng = np.random.default_rng([seed, 12345])
    images = []
    for h, w in sizes:
        tile = 30
        low = rng.integers(0, 256, size=(h // tile + 1, w // tile + 1, 3))
        img = low.repeat(tile, 0).repeat(tile, 1)[:h, :w].astype(np.int64)
        yy, xx = np.mgrid[0:h, 0:w]
        for k in range(12):
            bw, bh = rng.integers(w // 12, w // 3), rng.integers(h // 12, h // 3)
            x1, y1 = rng.integers(0, w - bw), rng.integers(0, h - bh)
            color = rng.integers(0, 256, size=3)
            if k % 3 == 0:
                inside = (yy >= y1) & (yy < y1 + bh) & (xx >= x1) & (xx < x1 + bw)
            else:
                inside = (((yy - y1 - bh / 2) / (bh / 2)) ** 2
                          + ((xx - x1 - bw / 2) / (bw / 2)) ** 2) <= 1
            if k % 4 == 1:
                half = int(rng.integers(2, 5))
                stripe = ((xx + yy) // half) % 2 == 0
                img[inside & stripe] = color
                img[inside & ~stripe] = 255 - color
            else:
                img[inside] = color
        images.append(img.astype(np.uint8))
    return images


def normalise(model, images: list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 HWC images -> the preprocessor's normalisation, NCHW float32 (same sizes)."""
    pre = model.data_preprocessor
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return (x - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1)


def calibrate(model, seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """BatchNorm statistics and FPN lateral divisors, measured in mmdetection.

    Running statistics: cumulative average (momentum None) of train-mode backbone passes over
    ``CALIBRATION['batches']`` batches of generated images. Lateral divisors: the global std
    of each backbone level the FPN reads, in eval mode on the same images, which keeps P2-P6 at
    O(1) magnitude for any depth (R2-101's 23-block stage grows the residual stream).
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for bn in bns:
        bn.train()
        bn.momentum = None
        bn.reset_running_stats()
    batches = []
    with torch.no_grad():
        for k in range(CALIBRATION["batches"]):
            images = make_images(seed + CALIBRATION["seed_offset"] + k,
                                 [CALIBRATION["size"]] * CALIBRATION["batch_size"])
            batches.append(normalise(model, images))
            model.backbone(batches[-1])
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
    calib = {key: value.detach().numpy().copy() for key, value in model.state_dict().items()
             if key.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    lateral_std = {}
    with torch.no_grad():
        levels = model.backbone(torch.cat(batches))
    start = model.neck.start_level
    for i, _ in enumerate(model.neck.lateral_convs):
        lateral_std[f"neck.lateral_convs.{i}.conv.weight"] = float(
            levels[start + i].double().std())
    return calib, lateral_std


def prepare_weights(model, name: str, seed: int) -> MmdetFixture:
    """Seeded weights -> calibrated model; returns the fixture skeleton (meta + calib arrays)."""
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    seeded = seeded_state_dict(shapes, seed)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in seeded.items()})
    calib, lateral_std = calibrate(model, seed)
    state = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    apply_lateral_scales(state, lateral_std)
    model.load_state_dict({key: torch.from_numpy(state[key].copy()) for key in lateral_std},
                          strict=False)
    meta = dict(config=name, seed=seed,
                state_dict_shapes={key: list(shape) for key, shape in shapes.items()},
                lateral_std=lateral_std)
    fixture = MmdetFixture(meta, {CALIB_PREFIX + key: value for key, value in calib.items()})
    rebuilt = rebuild_state_dict(fixture)
    actual = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    assert rebuilt.keys() == actual.keys()
    for key, value in actual.items():
        assert rebuilt[key].dtype == value.dtype and np.array_equal(rebuilt[key], value), key
    meta["weights"] = dict(numpy=np.__version__, seeded_sha256=state_dict_sha256(seeded),
                           state_sha256=state_dict_sha256(actual))
    return fixture


class Recorder:
    """Forward hooks that keep copies of mmdetection's intermediates, by name."""

    def __init__(self):
        self.tensors: dict[str, np.ndarray] = {}
        self.calls: dict[str, int] = {}
        self.handles = []

    def put(self, key: str, tensor: torch.Tensor) -> None:
        assert key not in self.tensors, f"{key} recorded twice"
        self.tensors[key] = tensor.detach().float().cpu().numpy().copy()

    def hook(self, module: torch.nn.Module, name: str, fn) -> None:
        def run(mod, args, out):
            self.calls[name] = self.calls.get(name, 0) + 1
            fn(args, out)

        self.handles.append(module.register_forward_hook(run))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def stage_modules(owner, attr: str) -> list[torch.nn.Module]:
    """A RoI head's bbox/mask extractor or head as a list over stages."""
    module = getattr(owner, attr, None)
    if module is None:
        return []
    return list(module) if isinstance(module, torch.nn.ModuleList) else [module]


def attach(model, rec: Recorder) -> None:
    """Hooks on backbone, neck, RPN, RoI extractors and heads, semantic head, preprocessor."""

    def levels(prefix):
        def fn(args, out):
            for level, tensor in enumerate(out):
                rec.put(f"{prefix}.{level}", tensor)
        return fn

    rec.hook(model.backbone, "backbone", levels("backbone"))
    rec.hook(model.neck, "neck", levels("neck"))

    def rpn_raw(args, out):
        for part, tensors in zip(("cls_score", "bbox_pred"), out, strict=True):
            for level, tensor in enumerate(tensors):
                rec.put(f"rpn.{part}.{level}", tensor)

    rec.hook(model.rpn_head, "rpn_head", rpn_raw)
    rpn_predict = model.rpn_head.predict

    def predict(*args, **kwargs):
        results = rpn_predict(*args, **kwargs)
        for i, res in enumerate(results):
            rec.put(f"rpn.proposals{i}.bboxes", res.bboxes)
            rec.put(f"rpn.proposals{i}.scores", res.scores)
        return results

    model.rpn_head.predict = predict
    pre_forward = model.data_preprocessor.forward

    def preprocess(*args, **kwargs):
        out = pre_forward(*args, **kwargs)
        rec.put("inputs", out["inputs"])
        return out

    model.data_preprocessor.forward = preprocess
    head = model.roi_head
    for s, extractor in enumerate(stage_modules(head, "bbox_roi_extractor")):
        rec.hook(extractor, f"bbox{s}.extractor",
                 lambda args, out, s=s: rec.put(f"bbox{s}.rois", args[1]))
    for s, box_head in enumerate(stage_modules(head, "bbox_head")):
        def box(args, out, s=s):
            rec.put(f"bbox{s}.head_input", args[0])
            rec.put(f"bbox{s}.cls_score", out[0])
            rec.put(f"bbox{s}.bbox_pred", out[1])
        rec.hook(box_head, f"bbox{s}.head", box)
    if getattr(head, "with_mask", False):
        for s, extractor in enumerate(stage_modules(head, "mask_roi_extractor")):
            rec.hook(extractor, f"mask{s}.extractor",
                     lambda args, out, s=s: rec.put(f"mask.rois.{s}", args[1]))
        for s, mask_head in enumerate(stage_modules(head, "mask_head")):
            def mask(args, out, s=s):
                rec.put(f"mask{s}.head_input", args[0])
                rec.put(f"mask{s}.logits", out[0] if isinstance(out, list | tuple) else out)
            rec.hook(mask_head, f"mask{s}.head", mask)
    if getattr(head, "with_semantic", False):
        def semantic(args, out):
            rec.put("semantic.pred", out[0])
            rec.put("semantic.feat", out[1])
        rec.hook(head.semantic_head, "semantic", semantic)


def probe(arrays: dict, name: str, tensor: np.ndarray) -> None:
    """Store ``name``'s shape, fixed flat indices, values there and [mean, std, absmax]."""
    flat = tensor.reshape(-1)
    k = min(N_PROBE, flat.size)
    rng = np.random.default_rng([0, zlib.crc32(name.encode())])
    idx = np.sort(rng.choice(flat.size, k, replace=False)).astype(np.int64)
    wide = tensor.astype(np.float64)
    arrays[f"{name}.shape"] = np.array(tensor.shape, np.int64)
    arrays[f"{name}.idx"] = idx
    arrays[f"{name}.val"] = flat[idx].astype(np.float32)
    arrays[f"{name}.stats"] = np.array([wide.mean(), wide.std(), np.abs(wide).max()])


def first_rows(batch_index: np.ndarray, count: int, n_images: int) -> np.ndarray:
    """Indices of the first ``count`` rows of each image (rows grouped by batch index)."""
    rows = [np.flatnonzero(batch_index == i)[:count] for i in range(n_images)]
    return np.concatenate(rows).astype(np.int64)


def run_config(name: str, args) -> tuple[MmdetFixture, dict]:
    """Build, calibrate and run one config; returns the fixture and a summary."""
    from mmengine.dataset import pseudo_collate

    cfg = load_config(name, args.depth, args.scale)
    model = build_model(cfg)
    fixture = prepare_weights(model, name, args.seed)
    arrays, meta = fixture.arrays, fixture.meta
    model.eval()

    images = make_images(args.seed, args.images)
    from mmcv.transforms import Compose

    pipeline = Compose(cfg.test_pipeline)
    # LoadImageFromNDArray stands for cv2.imread: it expects BGR.
    items = [pipeline(dict(img=np.ascontiguousarray(img[..., ::-1]), img_id=i))
             for i, img in enumerate(images)]
    data = pseudo_collate(items)
    rec = Recorder()
    attach(model, rec)
    start = time.perf_counter()
    with torch.no_grad():
        results = model.test_step(data)
    seconds = time.perf_counter() - start
    rec.remove()
    t = rec.tensors

    pre = model.data_preprocessor
    mean = pre.mean.view(3).numpy().astype(np.float32)
    std = pre.std.view(3).numpy().astype(np.float32)
    inputs = t.pop("inputs")
    image_meta = []
    for i, (img, item, res) in enumerate(zip(images, items, results, strict=True)):
        resized = item["inputs"].permute(1, 2, 0).numpy()[..., ::-1]  # CHW BGR -> HWC RGB
        resized = np.ascontiguousarray(resized)
        info = res.metainfo
        h, w = resized.shape[:2]
        assert tuple(info["img_shape"]) == (h, w), (info["img_shape"], resized.shape)
        rebuilt = np.zeros(inputs.shape[1:], np.float32)
        rebuilt[:, :h, :w] = ((resized.astype(np.float32) - mean) / std).transpose(2, 0, 1)
        error = np.abs(rebuilt - inputs[i]).max()
        assert error <= 1e-6, f"{name}: resized uint8 does not reproduce inputs ({error})"
        arrays[f"img{i}.original"] = img
        arrays[f"img{i}.resized"] = resized
        pred = res.pred_instances
        arrays[f"det{i}.bboxes"] = pred.bboxes.numpy().astype(np.float32)
        arrays[f"det{i}.scores"] = pred.scores.numpy().astype(np.float32)
        arrays[f"det{i}.labels"] = pred.labels.numpy().astype(np.int64)
        if "masks" in pred:
            masks = pred.masks.numpy().astype(bool)
            assert masks.shape[1:] == img.shape[:2]
            arrays[f"det{i}.masks"] = np.packbits(masks, axis=-1)
        scores = arrays[f"det{i}.scores"]
        image_meta.append(dict(
            ori_shape=list(info["ori_shape"]), img_shape=list(info["img_shape"]),
            pad_shape=list(info.get("pad_shape", info["img_shape"])),
            batch_input_shape=list(info["batch_input_shape"]),
            scale_factor=[float(f) for f in info["scale_factor"]],
            num_dets=int(len(scores)),
            max_score=float(scores.max()) if len(scores) else None,
            min_score=float(scores.min()) if len(scores) else None))
        arrays[f"rpn.proposals{i}.bboxes"] = t.pop(f"rpn.proposals{i}.bboxes")
        arrays[f"rpn.proposals{i}.scores"] = t.pop(f"rpn.proposals{i}.scores")

    for key in [k for k in t if k.startswith(("backbone.", "neck.", "rpn.", "semantic."))]:
        probe(arrays, key, t.pop(key))
    n_images = len(images)
    box_stages = sorted(int(k[4:-5]) for k in t if k.startswith("bbox") and k.endswith(".rois"))
    for s in box_stages:
        assert rec.calls[f"bbox{s}.extractor"] == 1 and rec.calls[f"bbox{s}.head"] == 1
        rois = t.pop(f"bbox{s}.rois")
        rows = first_rows(rois[:, 0], BOX_ROWS, n_images)
        arrays[f"bbox{s}.rois"] = rois
        arrays[f"bbox{s}.rows"] = rows
        arrays[f"bbox{s}.cls_score"] = t.pop(f"bbox{s}.cls_score")[rows]
        arrays[f"bbox{s}.bbox_pred"] = t.pop(f"bbox{s}.bbox_pred")[rows]
        probe(arrays, f"bbox{s}.head_input", t.pop(f"bbox{s}.head_input"))
    mask_stages = sorted(int(k[4:-7]) for k in t if k.startswith("mask") and k.endswith(".logits"))
    if mask_stages:
        mask_rois = [t.pop(k) for k in sorted(k for k in t if k.startswith("mask.rois."))]
        assert all(np.array_equal(r, mask_rois[0]) for r in mask_rois)
        rois = mask_rois[0]
        labels = np.concatenate([arrays[f"det{i}.labels"] for i in range(n_images)])
        assert len(rois) == len(labels)
        rows = first_rows(rois[:, 0], MASK_ROWS, n_images)
        arrays["mask.rois"] = rois
        for s in mask_stages:
            assert rec.calls[f"mask{s}.head"] == 1
            logits = t.pop(f"mask{s}.logits")
            arrays[f"mask{s}.rows"] = rows
            arrays[f"mask{s}.mask_pred"] = logits[rows, labels[rows]]
            probe(arrays, f"mask{s}.head_input", t.pop(f"mask{s}.head_input"))
    assert not t, f"unrecorded intermediates: {sorted(t)}"

    import mmcv
    import mmdet
    import mmengine
    import torchvision

    meta.update(
        mmdet_config=CONFIGS[name][0], published_model=CONFIGS[name][1],
        full_size_manifest=f"manifests/{CONFIGS[name][1]}.json",
        depth=args.depth, stage_blocks=list(model.backbone.stage_blocks),
        scales=cfg.model.backbone.scales, base_width=cfg.model.backbone.base_width,
        calibration=dict(CALIBRATION, size=list(CALIBRATION["size"]),
                         how="cumulative train-mode backbone passes (momentum None); laterals "
                             "divided by the std of their backbone level in eval mode"),
        data_preprocessor=dict(mean=mean.tolist(), std=std.tolist(), bgr_to_rgb=True,
                               pad_size_divisor=int(pre.pad_size_divisor), pad_value=0),
        test_scale=list(args.scale), test_cfg=cfg.model.test_cfg.to_dict(), images=image_meta,
        stages=dict(bbox=box_stages, mask=mask_stages),
        kept_rows=dict(bbox=BOX_ROWS, mask=MASK_ROWS, probe=N_PROBE),
        versions=dict(torch=torch.__version__, torchvision=torchvision.__version__,
                      mmcv=f"{mmcv.__version__} (mmcv-lite + tools/mmdet_shim.py)",
                      mmengine=mmengine.__version__, mmdet=mmdet.__version__,
                      numpy=np.__version__),
        inference_seconds=round(seconds, 2), threads=torch.get_num_threads())
    for i, m in enumerate(image_meta):
        assert m["num_dets"] >= MIN_DETS, f"{name}: image {i} has only {m['num_dets']} detections"
        assert m["max_score"] - m["min_score"] > 0.1, f"{name}: image {i} scores do not spread"
    summary = dict(config=name, dets=[m["num_dets"] for m in image_meta],
                   max_score=[round(m["max_score"] or 0, 3) for m in image_meta],
                   min_score=[round(m["min_score"] or 0, 4) for m in image_meta],
                   seconds=round(seconds, 2))
    return fixture, summary


def write(fixture: MmdetFixture, out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = fixture.meta["config"]
    np.savez_compressed(out / f"{name}.npz", **fixture.arrays)
    (out / f"{name}.json").write_text(json.dumps(fixture.meta, indent=1) + "\n")


def parse_size(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--depth", type=int, default=REDUCED_DEPTH,
                    help="Res2Net depth: 14 (reduced, committed) or 50/101/152")
    ap.add_argument("--scale", type=parse_size, default=(512, 320),
                    help="test Resize scale WxH, keep_ratio (published: 1333x800)")
    ap.add_argument("--images", type=lambda s: [parse_size(x) for x in s.split(",")],
                    default=list(IMAGE_SIZES), help="generated image sizes HxW,HxW")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    register_reduced_depth()
    for name in args.configs:
        fixture, summary = run_config(name, args)
        write(fixture, args.out)
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
