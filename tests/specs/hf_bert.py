"""Spec: a tiny Hugging Face BERT classifier (random init from a config: nothing downloaded),
two inputs (input_ids, attention_mask), on generated token data. Needs `transformers`."""

import torch

IDS_VOCAB = 100
METRIC_NAME = "accuracy (%)"


def build_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=IDS_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, num_labels=3)  # fmt: skip
    cfg._attn_implementation = "eager"
    return BertForSequenceClassification(cfg).eval()


def _batch(seed: int, n: int = 16, t: int = 12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, IDS_VOCAB, (n, t), generator=g)
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
            y = model(input_ids=ids, attention_mask=mask).logits.argmax(1)  # FP32 labels: agreement metric
        out.append(((ids, mask), y))
    return out
