"""Spec (benchmark, not a test): a BERT-size encoder as issue 11 and 13 describe it: a randomly
initialised Hugging Face BERT (30,522-token vocabulary, 6 layers of 384, eager attention) under
masked mean pooling and L2 normalisation, ~90 MB of FP32 weights (the exporter writes them to an
external-data file). Nothing is downloaded. The metric is agreement with the FP32 model's own
nearest-neighbour retrieval (top-1 cosine neighbour among the batch), in %.

    qanalysis export bench/specs/bert_size_encoder.py --config examples/lm/w4g32.json --out bert_w4
"""

import torch

VOCAB = 30522
METRIC_NAME = "retrieval agreement with FP32 (%)"


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=128)  # fmt: skip
        cfg._attn_implementation = "eager"
        self.bert = BertModel(cfg, add_pooling_layer=False)

    def forward(self, ids, mask):
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


def build_model():
    return Encoder().eval()


def _batch(seed: int, n: int = 16, t: int = 32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[:, t // 2 :] = (torch.rand(n, t - t // 2, generator=g) > 0.3).long()
    return ids, mask


def calibration_batches():
    return [_batch(i) for i in range(2)]


def evaluation_batches():
    return [(_batch(100 + i), torch.zeros(16)) for i in range(2)]


_REF: dict = {}


def evaluate(outputs, targets):
    """Each embedding's nearest other embedding (cosine) in its batch of 16, compared with the FP32
    model's choice for the same sample (the first call, FP32, sets the reference)."""
    sims = []
    for o in outputs.split(16):
        s = o @ o.T
        s.fill_diagonal_(-2.0)
        sims.append(s.argmax(1))
    nn = torch.cat(sims)
    ref = _REF.setdefault("fp32", nn)
    return float((nn == ref).double().mean() * 100.0)
