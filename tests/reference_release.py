"""An independent re-statement of the release's network and single-pass inference, for parity tests.

It works directly on a state dict with the release's key names (``c2_conv``, ``cls_subnet.2.branch0``,
``layer5``...) using functional convolutions, and follows the release's per-image, per-level
numpy procedure (``rpn_proposal.py``), so that it shares no code with ``srn``'s modules.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import nms


def _conv(state, x, name, stride=1):
    weight = state[f"{name}.weight"]
    padding = (weight.shape[2] // 2, weight.shape[3] // 2)
    return F.conv2d(x, weight, state.get(f"{name}.bias"), stride=stride, padding=padding)


def _rfe(state, x, prefix):
    branches = []
    for b in range(4):
        y = F.relu(_conv(state, x, f"{prefix}.branch{b}.0"))
        y = F.relu(_conv(state, y, f"{prefix}.branch{b}.2"))
        branches.append(F.relu(_conv(state, y, f"{prefix}.branch{b}.4")))
    return F.relu(_conv(state, torch.cat(branches, 1), f"{prefix}.cated_conv.0")) + x


def _subnet(state, x, prefix):
    x = F.relu(_conv(state, x, f"{prefix}.0"))
    x = _rfe(state, x, f"{prefix}.2")
    return F.relu(_conv(state, x, f"{prefix}.3"))


def release_forward(state: dict, images: torch.Tensor) -> list[tuple]:
    """Raw (cls_fs, loc_fs, cls_ss, loc_ss) per level, in the release's NCHW layout."""
    resnet = torchvision.models.resnet50(weights=None).eval()
    resnet.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")}, strict=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (images - mean) / std
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    c2 = resnet.layer1(x)
    c3 = resnet.layer2(c2)
    c4 = resnet.layer3(c3)
    c5 = resnet.layer4(c4)
    c6 = _conv(state, c5, "layer5", stride=2)
    c7 = _conv(state, c6, "layer6", stride=2)
    firsts = [_conv(state, c, f"c{k}_conv") for k, c in zip(range(2, 8), (c2, c3, c4, c5, c6, c7))]

    def up_add(top, lateral):
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral

    l5 = _conv(state, c5, "c5_lateral")
    p5 = _conv(state, l5, "p5_conv")
    p6 = _conv(state, l5, "p6_conv", stride=2)
    p7 = _conv(state, p6, "p7_conv", stride=2)
    s4 = up_add(l5, _conv(state, c4, "c4_lateral"))
    s3 = up_add(s4, _conv(state, c3, "c3_lateral"))
    s2 = up_add(s3, _conv(state, c2, "c2_lateral"))
    seconds = [_conv(state, s2, "p2_conv"), _conv(state, s3, "p3_conv"), _conv(state, s4, "p4_conv"), p5, p6, p7]

    def rpn(f):
        return _conv(state, _subnet(state, f, "cls_subnet"), "cls_subnet_pred"), _conv(state, _subnet(state, f, "box_subnet"), "box_subnet_pred")

    return [(*rpn(a), *rpn(b)) for a, b in zip(firsts, seconds)]


def _anchors_over_plane(h, w, stride):
    """The release's anchor_helper: ratio 1.25, scales (2, 2.828427), Detectron-style."""
    base = []
    w0 = round(np.sqrt(stride * stride / 1.25))
    h0 = round(w0 * 1.25)
    c = (stride - 1) / 2
    for scale in (2.0, 2.828427):
        ws, hs = w0 * scale, h0 * scale
        base.append([c - (ws - 1) / 2, c - (hs - 1) / 2, c + (ws - 1) / 2, c + (hs - 1) / 2])
    base = np.array(base)
    sx, sy = np.meshgrid(np.arange(w) * stride, np.arange(h) * stride)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], 1)
    return (shifts[:, None, :] + base[None]).reshape(-1, 4)


def _loc_bboxes(anchors, deltas):
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    cx = anchors[:, 0] + 0.5 * w
    cy = anchors[:, 1] + 0.5 * h
    pcx = deltas[:, 0] * w + cx
    pcy = deltas[:, 1] * h + cy
    pw = np.exp(deltas[:, 2]) * w
    ph = np.exp(deltas[:, 3]) * h
    return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)


def release_detections(raw, stc_levels=(0, 1, 2), str_levels=(3, 4, 5), top_n=6000, nms_iou=0.4, max_det=750):
    """The release's procedure, one image at a time (raw from :func:`release_forward`)."""
    batch = raw[0][0].shape[0]
    results = []
    for b in range(batch):
        candidates = []
        for level, (cls_fs, loc_fs, cls_ss, loc_ss) in enumerate(raw):
            _, a, h, w = cls_fs.shape
            k = h * w
            anchors = _anchors_over_plane(h, w, 4 * 2**level)
            p1 = torch.sigmoid(cls_fs[b]).permute(1, 2, 0).reshape(-1).double().numpy()
            p2 = torch.sigmoid(cls_ss[b]).permute(1, 2, 0).reshape(-1).double().numpy()
            d1 = loc_fs[b].permute(1, 2, 0).reshape(-1, 4).double().numpy()
            d2 = loc_ss[b].permute(1, 2, 0).reshape(-1, 4).double().numpy()
            if level in str_levels:
                anchors = _loc_bboxes(anchors, d1)
            thresh = 0.05 if k >= 120 else 0.0
            idx = np.where(p2 > thresh)[0]
            if level in stc_levels:
                idx = np.intersect1d(np.where(p1 > 0.01)[0], idx)
            if idx.size == 0:
                continue
            scores = p2[idx]
            order = scores.argsort(kind="stable")[::-1][:top_n]
            boxes = _loc_bboxes(anchors[idx][order], d2[idx][order])
            candidates.append(np.hstack([boxes, scores[order, None]]))
        if not candidates:
            results.append(np.zeros((0, 5)))
            continue
        dets = np.vstack(candidates)
        dets = dets[dets[:, 4].argsort(kind="stable")[::-1]]
        keep = nms(torch.from_numpy(dets[:, :4]).float(), torch.from_numpy(dets[:, 4]).float(), nms_iou).numpy()
        results.append(dets[keep[:max_det]])
    return results
