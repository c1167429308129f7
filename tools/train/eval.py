#!/usr/bin/env python3
"""Scores an exported model folder (config.json + model.safetensors, as train.py writes it) on
the held-out text the llama-perplexity way, in f32 with train.py's PyTorch Mixtral, and prints
the per-layer expert usage on it. This is the reference `mixtral perplexity` is held to.

  /usr/bin/python3 tools/train/eval.py models/tale-mixtral [--file models/tale-mixtral/heldout.txt]"""
import argparse, json, math, os, struct, sys

import numpy as np
import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        if h["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.int16).copy()).view(torch.bfloat16).float()
        elif h["dtype"] == "F16":
            t = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float16).astype(np.float32))
        else:
            t = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).copy())
        out[name] = t.reshape(h["shape"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--file", default=None, help="text to score (default: MODEL/heldout.txt)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokenizer", default=None, help="default: MODEL/tokenizer.model")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer or os.path.join(a.model, "tokenizer.model"))
    targs = argparse.Namespace(
        dim=cfg["hidden_size"], layers=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
        kv_heads=cfg["num_key_value_heads"], hidden=cfg["intermediate_size"], experts=cfg["num_local_experts"],
        top_k=cfg["num_experts_per_tok"], ctx=max(a.ctx, cfg["max_position_embeddings"]),
        rope_theta=cfg["rope_theta"], eps=cfg["rms_norm_eps"])
    vocab = cfg["vocab_size"]
    model = train.Mixtral(targs, vocab, [0])
    sd = load_safetensors(os.path.join(a.model, "model.safetensors"))
    head = sd.pop("lm_head.weight")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("head_")]
    if missing or unexpected:
        sys.exit("weights do not match the architecture: missing %s unexpected %s" % (missing, unexpected))
    model.full_head = head
    text = open(a.file or os.path.join(a.model, "heldout.txt"), encoding="utf-8").read()
    tokens = [sp.bos_id()] + sp.encode(text)
    ppl, nll, counts = train.ppl_chunks(model, tokens, a.ctx, sp.bos_id(), a.chunks)
    n = len(nll)
    mean = sum(nll) / n
    err = ppl * math.sqrt(max(0.0, sum(v * v for v in nll) / n - mean * mean) / max(1, n - 1))
    print("tokens %d, chunks %d of %d, scored %d" % (len(tokens), n // (a.ctx - 1 - a.ctx // 2), a.ctx, n))
    print("PPL = %.4f +/- %.5f" % (ppl, err))
    print("expert usage (share of top-%d slots):" % targs.top_k)
    print("\n".join(train.histogram(counts)))


if __name__ == "__main__":
    main()
