"""Pure-torch stand-in for mmcv's compiled kernels, so mmdetection 3.3 runs from mmcv-lite.

Why: mmdetection 3.3 needs mmcv < 2.2, whose full build (``mmcv``, with the compiled
``mmcv._ext``) has no wheels for current torch releases and takes a long CUDA/C++ build. The
``mmcv-lite`` wheel ships all of mmcv's Python code but not ``mmcv._ext``, so ``import
mmcv.ops`` (and with it ``import mmdet.models``) fails. The five Res2Net detectors only need
three kernels at test time and for a train-mode pass: NMS and RoIAlign forward/backward.

What: :func:`install` registers a module named ``mmcv._ext`` in ``sys.modules`` before
anything imports ``mmcv.ops``. It provides

* ``nms(boxes, scores, iou_threshold, offset)``: kept indices, best score first. ``offset=0``
  is ``torchvision.ops.nms`` (the same rule as mmcv's CPU kernel: suppress when IoU > thr);
  ``offset=1`` is a greedy loop mirroring mmcv's ``nms_cpu``.
* ``roi_align_forward`` / ``roi_align_backward`` for ``pool_mode='avg'`` from torchvision's
  RoIAlign, which is the same Detectron algorithm as mmcv's kernel (mmcv's own
  ``RoIAlign(use_torchvision=True)`` relies on that equivalence).

Only the kernels are replaced: mmcv's Python wrappers (``batched_nms`` with its class offsets
and ``split_thr``, ``NMSop``'s score filtering, ``RoIAlign``) run unchanged on top of them,
so mmdetection's semantics are kept. Any other ``mmcv._ext`` function is a stub that raises
``NotImplementedError`` when called (it still passes ``ext_loader.load_ext``'s ``hasattr``
checks, so every ``mmcv.ops`` submodule imports).

Usage, before ``import mmdet.models``::

    import mmdet_shim
    mmdet_shim.install()

``python tools/mmdet_shim.py`` (in the mmdetection environment) runs :func:`selftest`.
"""

from __future__ import annotations

import sys
import types

import torch

__all__ = ["install", "selftest"]


def _nms_greedy(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                offset: int) -> torch.Tensor:
    """Greedy NMS for any ``offset`` (box widths ``x2 - x1 + offset``), as mmcv's ``nms_cpu``."""
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    x1, y1, x2, y2 = boxes.float().unbind(1)
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    order = scores.sort(0, descending=True)[1]
    keep = torch.ones(boxes.size(0), dtype=torch.bool)
    for pos in range(boxes.size(0)):
        if not keep[pos]:
            continue
        i, rest = order[pos], order[pos + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + offset).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + offset).clamp(min=0)
        inter = w * h
        keep[pos + 1:] &= ~(inter / (areas[i] + areas[rest] - inter) > iou_threshold)
    return order[keep]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5,
        offset: int = 0) -> torch.Tensor:
    """``mmcv._ext.nms``: indices of the kept boxes in descending score order."""
    import torchvision

    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    if offset == 0:
        return torchvision.ops.nms(boxes, scores.to(boxes.dtype), float(iou_threshold))
    return _nms_greedy(boxes, scores, float(iou_threshold), offset)


def roi_align_forward(features, rois, output, argmax_y, argmax_x, aligned_height=7,
                      aligned_width=7, spatial_scale=1.0, sampling_ratio=0, pool_mode=1,
                      aligned=True) -> None:
    """``mmcv._ext.roi_align_forward`` (average pooling only), written into ``output``."""
    import torchvision

    if pool_mode != 1:
        raise NotImplementedError("mmdet_shim: RoIAlign pool_mode='max' is not provided")
    out = torchvision.ops.roi_align(
        features, rois.to(features.dtype), (int(aligned_height), int(aligned_width)),
        spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio),
        aligned=bool(aligned))
    output.copy_(out)


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height=7,
                       aligned_width=7, spatial_scale=1.0, sampling_ratio=0, pool_mode=1,
                       aligned=True) -> None:
    """``mmcv._ext.roi_align_backward`` (average pooling only), written into ``grad_input``."""
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    if pool_mode != 1:
        raise NotImplementedError("mmdet_shim: RoIAlign pool_mode='max' is not provided")
    b, c, h, w = grad_input.shape
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output.contiguous(), rois.to(grad_output.dtype), float(spatial_scale),
        int(aligned_height), int(aligned_width), b, c, h, w, int(sampling_ratio), bool(aligned))
    grad_input.copy_(grad)


_PROVIDED = {
    "nms": nms,
    "roi_align_forward": roi_align_forward,
    "roi_align_backward": roi_align_backward,
}


class _FakeExt(types.ModuleType):
    """``mmcv._ext`` replacement: the provided kernels, and raising stubs for the rest."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def _missing(*args, **kwargs):
            raise NotImplementedError(
                f"mmcv._ext.{name} is not available: mmcv-lite has no compiled ops and "
                "tools/mmdet_shim.py provides only nms and roi_align")

        _missing.__name__ = name
        return _missing


def install() -> types.ModuleType:
    """Register the stand-in ``mmcv._ext``; idempotent; must run before ``mmcv.ops`` imports."""
    existing = sys.modules.get("mmcv._ext")
    if isinstance(existing, _FakeExt):
        return existing
    if "mmcv.ops" in sys.modules and existing is None:
        raise RuntimeError("mmdet_shim.install() must run before mmcv.ops is imported")
    import mmcv  # the lite package; importing it does not import mmcv.ops

    ext = _FakeExt("mmcv._ext")
    ext.__file__ = __file__
    for name, fn in _PROVIDED.items():
        setattr(ext, name, fn)
    sys.modules["mmcv._ext"] = ext
    mmcv._ext = ext
    return ext


def selftest() -> None:
    """Check the kernels through mmcv's own wrappers against independent references."""
    install()
    import torchvision
    from mmcv.ops import RoIAlign, batched_nms
    from mmcv.ops import nms as mmcv_nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 60 + 1], 1)
    scores = torch.rand(300, generator=g)
    kept = nms(boxes, scores, 0.5, 0)
    assert torch.equal(kept, _nms_greedy(boxes, scores, 0.5, 0)), "nms: torchvision vs greedy"
    dets, keep = mmcv_nms(boxes, scores, 0.5)
    assert dets.shape[1] == 5 and torch.equal(keep, kept), "mmcv.ops.nms"
    labels = torch.randint(0, 5, (300,), generator=g)
    _, per_class = batched_nms(boxes, scores, labels, dict(type="nms", iou_threshold=0.5))
    expected = []
    for c in range(5):
        members = (labels == c).nonzero().view(-1)
        expected += members[nms(boxes[members], scores[members], 0.5)].tolist()
    assert set(per_class.tolist()) == set(expected), "batched_nms"
    feats = torch.randn(2, 4, 25, 38, generator=g, requires_grad=True)
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), boxes[:40] * 0.9], 1)
    for aligned in (True, False):
        for ratio in (0, 2):
            out = RoIAlign((7, 7), 1 / 8, ratio, aligned=aligned)(feats, rois)
            feats2 = feats.detach().clone().requires_grad_(True)
            out2 = torchvision.ops.roi_align(feats2, rois, (7, 7), 1 / 8, ratio, aligned)
            assert torch.allclose(out, out2), "RoIAlign forward"
            grad_out = torch.randn(out.shape, generator=g)
            (grad,) = torch.autograd.grad(out, feats, grad_out)
            (grad2,) = torch.autograd.grad(out2, feats2, grad_out)
            assert torch.allclose(grad, grad2, atol=1e-6), "RoIAlign backward"
    print("mmdet_shim selftest: nms, batched_nms, RoIAlign forward/backward OK")


if __name__ == "__main__":
    selftest()
