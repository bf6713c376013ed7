"""Spec: a small text classifier whose 30,000-token embedding (7.7 MB) makes the exporter write
its weights to an external-data file beside the ONNX model (the BERT-size case of issue 11)."""

import torch

VOCAB = 30000


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, 64)
        self.fc1 = torch.nn.Linear(64, 64)
        self.fc2 = torch.nn.Linear(64, 4)

    def forward(self, ids, mask):
        m = mask.unsqueeze(-1).float()
        h = (self.emb(ids) * m).sum(1) / m.sum(1).clamp(min=1)
        return self.fc2(torch.relu(self.fc1(h)))


def build_model():
    return Model().eval()


def _batch(seed, n=16, t=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[:, t - 3 :] = (torch.rand(n, 3, generator=g) > 0.5).long()
    return ids, mask


def calibration_batches():
    return [_batch(i) for i in range(2)]


def evaluation_batches():
    model = build_model()
    out = []
    for i in range(3):
        ids, mask = _batch(100 + i)
        with torch.no_grad():
            out.append(((ids, mask), model(ids, mask).argmax(1)))  # agreement with FP32
    return out
