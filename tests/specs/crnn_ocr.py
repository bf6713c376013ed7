"""Spec: a CRNN text-line recognizer (Shi et al. 2015, the usual OCR recognizer shape).

VGG-style convolutions turn a 1×32×100 grayscale line into 25 column features; two
bidirectional LSTM layers read them left to right and right to left; a Linear gives 37 scores
(blank, 0-9, a-z) per column. The ONNX export keeps the LSTMs as LSTM nodes, which ORT's
quantizer leaves in float (Q/DQ on their inputs only).

Weights are random (seeded) and the lines are generated glyph strips, so the metric is the
per-column agreement of the model's top-1 character with the FP32 model's own (100 % in FP32):
what quantization changes in the decoded string before CTC collapsing.
"""

from __future__ import annotations

import torch
from torch import nn

SEED = 0
N_CLASSES = 37  # CTC blank + 10 digits + 26 letters
HEIGHT, WIDTH = 32, 100
DESCRIPTION = "CRNN OCR recognizer: VGG features + 2 bidirectional LSTMs + per-column Linear (random weights)"
METRIC_NAME = "per-column top-1 agreement with FP32 (%)"


def _block(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return [*layers, nn.ReLU(inplace=True)]


class CRNN(nn.Module):
    def __init__(self, n_classes: int = N_CLASSES, hidden: int = 48):
        super().__init__()
        self.features = nn.Sequential(
            *_block(1, 16, False), nn.MaxPool2d(2, 2),  # 16×50
            *_block(16, 32, False), nn.MaxPool2d(2, 2),  # 8×25
            *_block(32, 64, True), *_block(64, 64, False), nn.MaxPool2d((2, 1), (2, 1)),  # 4×25
            *_block(64, 96, True), nn.MaxPool2d((2, 1), (2, 1)),  # 2×25
            nn.Conv2d(96, 96, (2, 1)), nn.ReLU(inplace=True),  # 1×25
        )  # fmt: skip
        self.rnn1 = nn.LSTM(96, hidden, bidirectional=True)
        self.rnn2 = nn.LSTM(2 * hidden, hidden, bidirectional=True)
        self.classifier = nn.Linear(2 * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 1, 32, 100] → [N, 25, 37]
        f = self.features(x).squeeze(2).permute(2, 0, 1)  # [T, N, C]
        y, _ = self.rnn1(f)
        y, _ = self.rnn2(y)
        return self.classifier(y).permute(1, 0, 2)


def build_model() -> nn.Module:
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(SEED)
        m = CRNN()
        # Scales as in a trained recognizer (PyTorch's default init would shrink the signal layer by
        # layer and predict one character everywhere, which no quantization could change).
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.2, 0.2)
            elif isinstance(mod, nn.LSTM):
                for name, w in mod.named_parameters():
                    if name.startswith("weight"):
                        nn.init.xavier_normal_(w, gain=2.0)
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.5)
    return m.eval()


def _lines(n: int, seed: int) -> torch.Tensor:
    """Text-like lines: dark background, 6-9 glyphs of random strokes, blur-free, light noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, HEIGHT, WIDTH)
    for i in range(n):
        n_glyphs = int(torch.randint(6, 10, (1,), generator=g))
        left = int(torch.randint(0, 8, (1,), generator=g))
        for _ in range(n_glyphs):
            w = int(torch.randint(7, 11, (1,), generator=g))
            if left + w > WIDTH:
                break
            for _ in range(int(torch.randint(2, 5, (1,), generator=g))):  # strokes
                if bool(torch.rand(1, generator=g) < 0.5):  # vertical stroke
                    c = left + int(torch.randint(0, w, (1,), generator=g))
                    r0 = int(torch.randint(4, 14, (1,), generator=g))
                    x[i, 0, r0 : r0 + int(torch.randint(10, 18, (1,), generator=g)), c : c + 2] = 1.0
                else:  # horizontal stroke
                    r = int(torch.randint(6, 26, (1,), generator=g))
                    x[i, 0, r : r + 2, left : left + w] = 1.0
            left += w + int(torch.randint(1, 4, (1,), generator=g))
    x += 0.1 * torch.randn(x.shape, generator=g)
    return (x - 0.5) / 0.5


def calibration_batches():
    x = _lines(32, seed=1)
    return [x[i : i + 16] for i in range(0, 32, 16)]


def evaluation_batches():
    model = build_model()
    out = []
    for k in range(4):
        x = _lines(16, seed=100 + k)
        with torch.inference_mode():
            targets = model(x).argmax(-1)  # [N, T]: the FP32 model's characters
        out.append((x, targets))
    return out


def evaluate(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Percentage of (line, column) positions whose top-1 character equals the target's."""
    return float((outputs.argmax(-1) == targets).float().mean() * 100.0)
