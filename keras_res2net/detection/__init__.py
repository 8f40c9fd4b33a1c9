"""Two-stage detection (Faster R-CNN, Mask R-CNN) with FPN on Res2Net backbones.

The layout follows the TF Model Garden's `official/vision` without its weight:
`configs` (dataclasses and named experiments), `modeling` (decoder, heads, layers),
`ops` (box, sampling, NMS and mask operations), `data` (synthetic generator, COCO loader,
input pipeline), `evaluation` (pycocotools) and `task` (model, inputs, losses, steps).
Importing this package loads nothing heavy; import the submodules you need.
"""

# mmdetection checkpoints (keras_res2net.detection.convert, .weight_map), imported on first use.
_LAZY = {"from_mmdet": "convert", "load_mmdet_state_dict": "weight_map",
         "to_mmdet_state_dict": "weight_map"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
