"""Spec: a keyword spotter (speech commands shape): Conv1d over log-mel frames → 2-layer
bidirectional GRU → mean over time → Linear to 12 keywords.

Weights are random (seeded) and the spectrograms generated, so the metric is top-1 agreement
with the FP32 model's own keyword (100 % in FP32). The export keeps the GRUs as GRU nodes
(linear_before_reset=1), which ORT's quantizer leaves in float.
"""

from __future__ import annotations

import torch
from torch import nn

SEED = 0
N_MELS, FRAMES, N_KEYWORDS = 20, 40, 12
DESCRIPTION = "GRU keyword spotter: Conv1d + 2-layer bidirectional GRU + Linear (random weights)"
METRIC_NAME = "top-1 agreement with FP32 (%)"


class KWS(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(N_MELS, 32, 3, padding=1, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                                  nn.Conv1d(32, 32, 3, padding=1), nn.ReLU())  # fmt: skip
        self.gru = nn.GRU(32, 24, num_layers=2, bidirectional=True)
        self.head = nn.Linear(48, N_KEYWORDS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, mels, frames] → [N, keywords]
        y, _ = self.gru(self.conv(x).permute(2, 0, 1))
        return self.head(y.mean(0))


def build_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        m = KWS()
        for name, w in m.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_normal_(w, gain=2.0)
        nn.init.normal_(m.head.weight, std=1.0)
    return m.eval()


def _spectrograms(n: int, seed: int) -> torch.Tensor:
    """Log-mel-like: a few formant tracks drifting over time on a noise floor."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, FRAMES)
    mel = torch.arange(N_MELS).float().reshape(1, N_MELS, 1)
    x = 0.3 * torch.randn(n, N_MELS, FRAMES, generator=g)
    for _ in range(3):
        start = torch.rand(n, 1, 1, generator=g) * N_MELS
        slope = (torch.rand(n, 1, 1, generator=g) - 0.5) * 10
        center = start + slope * t.reshape(1, 1, FRAMES)
        x += 2.0 * torch.exp(-((mel - center) ** 2) / 4.0)
    return x


def calibration_batches():
    return [_spectrograms(32, seed=1)]


def evaluation_batches():
    model = build_model()
    out = []
    for k in range(4):
        x = _spectrograms(32, seed=10 + k)
        with torch.inference_mode():
            out.append((x, model(x).argmax(1)))
    return out
