"""Spec whose forward branches on the input values (issue 10): export keeps one branch only.

Calibration inputs sum to > 0 (the branch the exporter sees); evaluation inputs sum to < 0, where
PyTorch takes the other branch, which negates the logits. The targets are the classes of the
exported branch, so the exported graph scores 100 % and the real PyTorch model 0 %.
"""
import torch

CLASS_NAMES = ["a", "b"]


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, 4, generator=g))
            self.fc.bias.zero_()

    def forward(self, x):
        y = self.fc(x)
        if x.sum() > 0:  # data-dependent control flow: export fixes it to one branch
            return y
        return -y


def build_model():
    return Branchy().eval()


def calibration_batches():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(16, 4, generator=g) + 0.1]


def evaluation_batches():
    g = torch.Generator().manual_seed(2)
    model = build_model()
    out = []
    for _ in range(2):
        x = -(torch.rand(16, 4, generator=g) + 0.1)
        out.append((x, model.fc(x).argmax(1).detach()))  # the exported branch's classes
    return out
