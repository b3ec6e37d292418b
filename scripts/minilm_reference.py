#!/usr/bin/env python3
"""Reference all-MiniLM-L6-v2 sentence embeddings for routewise's MiniLM fixture test.

Computes the sentence-transformers pipeline of all-MiniLM-L6-v2 (modules.json:
Transformer(max_seq_length=256) -> Pooling(mean) -> Normalize) for 20 fixed sentences,
independently of candle: the tokenizer is Hugging Face `tokenizers` (Python), the BERT
encoder is re-implemented in float64 numpy from the safetensors weights (post-LN BERT,
exact erf GELU, eps 1e-12, as in transformers' BertModel). torch is not used because
its PyPI wheel pulls the CUDA stack (several GB).

Usage:
  pip install numpy safetensors tokenizers
  routewise models fetch minilm            # or any all-MiniLM-L6-v2 dir in HF layout
  python3 scripts/minilm_reference.py MODEL_DIR \
      > crates/routewise-features/tests/fixtures/minilm_reference.json
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "What is the capital of France?",
    "Write a Python function that reverses a linked list in place.",
    "The mitochondria is the powerhouse of the cell.",
    "Solve for x: 3x + 7 = 22.",
    "Translate 'good morning' into Japanese and explain the politeness level.",
    "Summarize the causes of the First World War in three sentences.",
    "Which of the following is a prime number? (A) 21 (B) 27 (C) 29 (D) 33",
    "I'm feeling a bit down today; can you suggest something uplifting?",
    "Explain the difference between TCP and UDP to a five-year-old.",
    "def fib(n): return n if n < 2 else fib(n-1) + fib(n-2)",
    "Café, naïve, résumé: accents and UTF-8 text should tokenize correctly.",
    "A patient presents with chest pain radiating to the left arm. What is the most likely diagnosis?",
    "Compute the derivative of sin(x) * e^x.",
    "Who wrote 'Pride and Prejudice', and in what year was it published?",
    "Hello!",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "In contract law, what constitutes consideration, and why is it required for a valid contract?",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "数学是科学的语言。",
    # Longer than 256 tokens: checks truncation to max_seq_length.
    " ".join(
        f"Step {i}: multiply the previous result by {i} and add the remainder modulo seven."
        for i in range(1, 40)
    ),
]

MAX_TOKENS = 256


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def bert_forward(w, cfg, ids):
    g = lambda k: w[k].astype(np.float64)
    n = len(ids)
    h = g("embeddings.word_embeddings.weight")[ids]
    h = h + g("embeddings.position_embeddings.weight")[:n]
    h = h + g("embeddings.token_type_embeddings.weight")[np.zeros(n, dtype=int)]
    eps = cfg["layer_norm_eps"]
    h = layer_norm(h, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)
    heads = cfg["num_attention_heads"]
    hd = cfg["hidden_size"] // heads
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        lin = lambda x, name: x @ g(p + name + ".weight").T + g(p + name + ".bias")
        q = lin(h, "attention.self.query").reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin(h, "attention.self.key").reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin(h, "attention.self.value").reshape(n, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * hd)
        a = lin(ctx, "attention.output.dense")
        h = layer_norm(a + h, g(p + "attention.output.LayerNorm.weight"),
                       g(p + "attention.output.LayerNorm.bias"), eps)
        f = lin(gelu(lin(h, "intermediate.dense")), "output.dense")
        h = layer_norm(f + h, g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias"), eps)
    return h


def main():
    model_dir = sys.argv[1]
    cfg = json.load(open(f"{model_dir}/config.json"))
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    w = load_file(f"{model_dir}/model.safetensors")
    w = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in w.items()}
    out = []
    for text in SENTENCES:
        ids = tok.encode(text).ids
        h = bert_forward(w, cfg, np.array(ids))
        e = h.mean(0)
        e = e / np.linalg.norm(e)
        out.append({"text": text, "n_tokens": len(ids),
                    "embedding": [round(float(x), 7) for x in e]})
    json.dump({"model": "sentence-transformers/all-MiniLM-L6-v2",
               "max_tokens": MAX_TOKENS,
               "method": "numpy float64 BERT forward + mean pooling + L2 normalise",
               "sentences": out}, sys.stdout, indent=None, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
