"""Two-stage detection (Faster R-CNN, Mask R-CNN) with FPN on Res2Net backbones.

The layout follows the TF Model Garden's `official/vision` without its weight:
`configs` (dataclasses and named experiments), `modeling` (decoder, heads, layers),
`ops` (box, sampling, NMS and mask operations), `data` (synthetic generator, COCO loader,
input pipeline), `evaluation` (pycocotools) and `task` (model, inputs, losses, steps).
Importing this package loads nothing heavy; import the submodules you need.
"""
