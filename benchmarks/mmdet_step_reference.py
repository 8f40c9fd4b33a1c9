"""mmdetection 3.3's side of `benchmarks/detection_step.py --reference` (not run directly).

Runs under the mmdetection environment's interpreter (torch, mmcv-lite, mmdet 3.3; the
compiled mmcv kernels replaced by `tools/mmdet_shim.py`), never in the project's. Builds the
full-size config from the mmdetection wheel with the seeded, BatchNorm-calibrated weights of
`tools/make_mmdet_fixtures.py` (mmdetection's default init detects nothing, which would make
inference look cheap), then answers one request per line on stdin:

- `step`: one timed step, printed as a JSON line `{"seconds", "note"}`;
  `--mode infer`: `model.test_step` under `torch.no_grad` (preprocessing, detection, masks);
  `--mode train`: preprocessing, `model.loss`, backward and an SGD update (momentum 0.9,
  weight decay 1e-4: mmdetection's schedule), the same work as our training step;
- `quit`: prints `{"peak_gib"}` (`ru_maxrss` of this process) and exits.

A first (warm-up) step runs before the first line is printed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_mmdet_fixtures as fixtures  # noqa: E402  (installs the kernel shim)
import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="mask_rcnn", choices=sorted(fixtures.CONFIGS))
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-gt", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fixtures.quiet()
    cfg = fixtures.load_config(args.config, 101, (args.width, args.height))
    model = fixtures.build_model(cfg)
    fixtures.prepare_weights(model, args.config, seed=0)
    model.eval()

    from mmcv.transforms import Compose
    from mmdet.structures.mask import BitmapMasks
    from mmengine.dataset import pseudo_collate
    from mmengine.structures import InstanceData

    image = fixtures.make_images(0, [(args.height, args.width)])[0]
    pipeline = Compose(cfg.test_pipeline)

    def batch(with_gt: bool):
        item = pipeline(dict(img=np.ascontiguousarray(image[..., ::-1]), img_id=0))
        if with_gt:  # ten random boxes with box masks, as ours
            rng = np.random.RandomState(1)
            h, w = image.shape[:2]
            side = min(h, w)  # as ours: at 800, corners in [0, 600), sides of 20-200 px
            xy = rng.uniform(0, 0.75 * side, size=(args.num_gt, 2))
            boxes = np.concatenate(
                [xy, xy + rng.uniform(0.025 * side, 0.25 * side, (args.num_gt, 2))], 1)
            masks = np.zeros((args.num_gt, h, w), np.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
                masks[i, y1:y2, x1:x2] = 1
            gt = InstanceData()
            gt.bboxes = torch.from_numpy(boxes.astype(np.float32))
            gt.labels = torch.from_numpy(rng.randint(0, 80, args.num_gt))
            if "mask" in args.config or args.config == "htc":
                gt.masks = BitmapMasks(masks, h, w)
            item["data_samples"].gt_instances = gt
            ignored = InstanceData()  # what PackDetInputs adds (none ignored)
            ignored.bboxes = torch.zeros(0, 4)
            ignored.labels = torch.zeros(0, dtype=torch.long)
            item["data_samples"].ignored_instances = ignored
        return pseudo_collate([item])

    if args.mode == "train":
        model.train()
        # mmdetection's first iterations: lr 0.02 scaled by the linear warmup's start factor
        # (0.001). At the full 0.02, with random heads and no warmup, the loss is NaN by the
        # third step, and steps on NaNs do not time the same work.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.02 * 0.001, momentum=0.9,
                                    weight_decay=1e-4)

        def step() -> str:
            data = batch(True)
            optimizer.zero_grad(set_to_none=True)
            inputs = model.data_preprocessor(data, training=True)
            loss, _ = model.parse_losses(model(**inputs, mode="loss"))
            loss.backward()
            optimizer.step()
            return f"total loss {float(loss):.3f}"
    else:
        data = batch(False)

        def step() -> str:
            with torch.no_grad():
                results = model.test_step(data)
            return f"{len(results[0].pred_instances)} detections"

    def timed() -> dict:
        start = time.perf_counter()
        note = step()
        return {"seconds": time.perf_counter() - start, "note": note}

    print(json.dumps(timed()), flush=True)  # warm-up
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        print(json.dumps(timed()), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"peak_gib": peak}), flush=True)


if __name__ == "__main__":
    main()
