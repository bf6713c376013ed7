"""Spec: a tiny Hugging Face Llama causal LM (random init from a config: nothing downloaded),
inputs (input_ids, attention_mask), logits [batch, seq, vocab], perplexity (lower is better)
on byte-level ids of CPython's own documentation text. Needs `transformers`."""

import torch

VOCAB = 512  # bytes 0..255 are the text, 256 is the padding id
PAD = 256
SEQ = 32
METRIC_NAME = "perplexity"
HIGHER_IS_BETTER = False
DESCRIPTION = "tiny random Llama (2 layers, hidden 64) on byte-level pydoc text"


def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      intermediate_size=128, max_position_embeddings=SEQ, use_cache=False, pad_token_id=PAD,
                      attn_implementation="eager")  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _text() -> bytes:
    from pydoc_data import topics

    return "\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")


def _batch(start: int, n: int = 8):
    """(input_ids, attention_mask) and next-token targets; the last rows are right-padded, and padding
    (and each row's last position, whose next token is not in the window) is -100: not scored."""
    data = torch.tensor(list(_text()[start : start + n * (SEQ + 1)]), dtype=torch.long).reshape(n, SEQ + 1)
    ids, nxt = data[:, :-1].clone(), data[:, 1:].clone()
    mask = torch.ones(n, SEQ, dtype=torch.long)
    for r in range(n // 2, n):  # right padding of a few tokens in half the rows
        k = SEQ - 2 * (r - n // 2 + 1)
        mask[r, k:] = 0
        ids[r, k:] = PAD
        nxt[r, k - 1 :] = -100
    return (ids, mask), nxt


def calibration_batches():
    return [_batch(10_000 * i)[0] for i in range(2)]


def evaluation_batches():
    return [_batch(200_000 + 10_000 * i) for i in range(3)]


def evaluate(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """exp(mean next-token cross-entropy) over the scored positions (targets -100 are ignored)."""
    nll = torch.nn.functional.cross_entropy(outputs.float().reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return float(torch.exp(nll))
