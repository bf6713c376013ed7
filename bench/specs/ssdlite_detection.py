"""Spec (benchmark, not a test): a detection model, torchvision's ``ssdlite320_mobilenet_v3_large``
with random weights (seeded; nothing is downloaded), as issue 11's zoo asks for one.

The graph is what a deployment runs in the engine: normalisation, backbone and SSD head, whose
output is every anchor's box regression and class logits (3,234 anchors × (4 + 91)). Decoding and
non-maximum suppression stay in float outside the graph, here in ``evaluate``, as they do in most
deployments (torchvision's own post-processing is data-dependent and does not export as one graph).

The metric is honest about random weights: there are no ground-truth boxes, so it measures how
far the quantized detector's detections agree with the FP32 detector's on the same images. Per
image, the top ``KEEP`` detections after class-wise NMS are matched to FP32's (same class,
IoU ≥ 0.5, greedy by score); the F1 of that matching, averaged over images, in %. FP32 scores 100
by construction. The FP32 references are computed here from the same seeded model, so the number
does not depend on the order in which qanalysis evaluates things.

    qanalysis analyze bench/specs/ssdlite_detection.py --out ssd
    qanalysis export bench/specs/ssdlite_detection.py --out ssd_engine
"""

from __future__ import annotations

import torch

METRIC_NAME = "detection agreement with FP32 (F1 %, IoU 0.5)"
SIZE = 320
KEEP = 20  # detections kept per image
CANDIDATES = 200  # (anchor, class) pairs considered per image before NMS
N_CALIB, N_EVAL = 16, 32


class Detector(torch.nn.Module):
    """Normalisation + backbone + SSD head; output [N, anchors, 4 + classes]."""

    def __init__(self):
        super().__init__()
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large

        g = torch.random.get_rng_state()
        torch.manual_seed(0)
        self.ssd = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
        torch.random.set_rng_state(g)

    def forward(self, x):
        x = (x - 0.5) / 0.5  # GeneralizedRCNNTransform's mean and std for this model
        feats = list(self.ssd.backbone(x).values())
        h = self.ssd.head(feats)
        return torch.cat([h["bbox_regression"], h["cls_logits"]], dim=-1)


def build_model():
    return Detector().eval()


def _images(seed: int, n: int) -> torch.Tensor:
    """Seeded scenes: a smooth background with a few coloured rectangles, values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, SIZE).view(1, SIZE, 1)
    xs = torch.linspace(0, 1, SIZE).view(1, 1, SIZE)
    out = torch.empty(n, 3, SIZE, SIZE)
    for i in range(n):
        a = torch.rand(3, 1, 1, generator=g)
        img = (0.3 + 0.4 * a * ys + 0.3 * (1 - a) * xs).expand(3, SIZE, SIZE).clone()
        for _ in range(int(torch.randint(2, 6, (1,), generator=g))):
            x0, y0 = (torch.rand(2, generator=g) * (SIZE - 48)).long().tolist()
            w, h = (24 + torch.rand(2, generator=g) * 120).long().tolist()
            img[:, y0 : y0 + h, x0 : x0 + w] = torch.rand(3, 1, 1, generator=g)
        out[i] = (img + 0.03 * torch.randn(3, SIZE, SIZE, generator=g)).clamp(0, 1)
    return out


def calibration_batches():
    x = _images(1, N_CALIB)
    return [(x[i : i + 8],) for i in range(0, N_CALIB, 8)]


def _eval_images() -> torch.Tensor:
    return _images(2, N_EVAL)


def evaluation_batches():
    x = _eval_images()
    ids = torch.arange(N_EVAL, dtype=torch.float32)  # the target is the image's index
    return [((x[i : i + 8],), ids[i : i + 8]) for i in range(0, N_EVAL, 8)]


_CACHE: dict = {}


def _anchors(model: Detector) -> torch.Tensor:
    if "anchors" not in _CACHE:
        from torchvision.models.detection.image_list import ImageList

        x = torch.zeros(1, 3, SIZE, SIZE)
        with torch.no_grad():
            feats = list(model.ssd.backbone(x).values())
        _CACHE["anchors"] = model.ssd.anchor_generator(ImageList(x, [(SIZE, SIZE)]), feats)[0]
    return _CACHE["anchors"]


def _reference() -> tuple[Detector, torch.Tensor]:
    """The FP32 model and its outputs on the evaluation images (computed once)."""
    if "ref" not in _CACHE:
        model = build_model()
        with torch.no_grad():
            _CACHE["ref"] = (model, torch.cat([model(x[0]) for x, _ in evaluation_batches()]))
    return _CACHE["ref"]


def _detections(model: Detector, out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(boxes, scores, labels) per image: top candidates, decoded, class-wise NMS, top KEEP."""
    from torchvision.ops import batched_nms

    anchors = _anchors(model)
    dets = []
    for o in out:
        reg, logits = o[:, :4], o[:, 4:]
        scores = torch.softmax(logits.double(), dim=-1)[:, 1:]  # class 0 is background
        top = scores.flatten().topk(CANDIDATES)
        a, c = top.indices // scores.shape[1], top.indices % scores.shape[1] + 1
        boxes = model.ssd.box_coder.decode_single(reg[a].float(), anchors[a]).clamp(0, SIZE)
        keep = batched_nms(boxes, top.values.float(), c, model.ssd.nms_thresh)[:KEEP]
        dets.append((boxes[keep], top.values[keep], c[keep]))
    return dets


def _f1(q, r) -> float:
    from torchvision.ops import box_iou

    qb, _, ql = q
    rb, _, rl = r
    if len(qb) == 0 or len(rb) == 0:
        return 100.0 if len(qb) == len(rb) else 0.0
    iou = box_iou(qb, rb) * (ql[:, None] == rl[None, :])
    used, matched = set(), 0
    for i in range(len(qb)):  # qb is in score order
        for j in iou[i].argsort(descending=True).tolist():
            if iou[i, j] < 0.5:
                break
            if j not in used:
                used.add(j)
                matched += 1
                break
    return 200.0 * matched / (len(qb) + len(rb))


def evaluate(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    model, ref = _reference()
    idx = targets.long()
    with torch.no_grad():
        mine = _detections(model, outputs.float())
        theirs = _detections(model, ref[idx])
    return sum(_f1(q, r) for q, r in zip(mine, theirs)) / len(mine)
