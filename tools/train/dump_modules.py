#!/usr/bin/env python3
"""Dumps one decoder layer's module inputs and outputs from train.py's PyTorch Mixtral (f32, on
the exported weights) for a few held-out tokens, so tests/module_test.cc can check attention, the
MoE block and the whole layer separately, and the final logits of the last position.

  /usr/bin/python3 tools/train/dump_modules.py models/tale-mixtral --layer 1 --tokens 10 \\
      --out tests/data/tale-modules.json

Every array is row-major [tokens, dim]; "attn_out" and "moe_out" are the blocks' outputs before
their residual add; "moe_in" is the residual stream the MoE block sees (layer_in + attn_out).
Router choices are listed in ascending expert order with their renormalized top-k weights."""
import argparse, json, math, os, sys

import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval as ev  # noqa: E402
import train  # noqa: E402


def rows(t):
    # float32 values printed with 9 significant digits round-trip exactly
    return [float("%.9g" % v) for v in t.reshape(-1).tolist()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--layer", type=int, default=1)
    p.add_argument("--tokens", type=int, default=10, help="BOS + the first tokens-1 of heldout.txt")
    p.add_argument("--top", type=int, default=20, help="top logits of the last position to store")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(2)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.model, "tokenizer.model"))
    targs = argparse.Namespace(
        dim=cfg["hidden_size"], layers=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
        kv_heads=cfg["num_key_value_heads"], hidden=cfg["intermediate_size"], experts=cfg["num_local_experts"],
        top_k=cfg["num_experts_per_tok"], ctx=cfg["max_position_embeddings"],
        rope_theta=cfg["rope_theta"], eps=cfg["rms_norm_eps"])
    model = train.Mixtral(targs, cfg["vocab_size"], [0])
    sd = ev.load_safetensors(os.path.join(a.model, "model.safetensors"))
    head = sd.pop("lm_head.weight")
    model.load_state_dict(sd, strict=False)
    model.full_head = head
    model.eval()

    text = open(os.path.join(a.model, "heldout.txt"), encoding="utf-8").read()
    ids = ([sp.bos_id()] + sp.encode(text))[:a.tokens]
    T = len(ids)
    with torch.no_grad():
        cos, sin = model.cos[:T], model.sin[:T]
        x = model.model.embed_tokens(torch.tensor([ids]))
        out = {}
        for li, layer in enumerate(model.model.layers):
            if li == a.layer:
                attn = layer.self_attn(layer.input_layernorm(x), cos, sin)
                mid = x + attn
                hn = layer.post_attention_layernorm(mid)
                moe, _, _ = layer.block_sparse_moe(hn)
                probs = torch.softmax(layer.block_sparse_moe.gate(hn[0]), dim=-1)
                w, sel = torch.topk(probs, targs.top_k, dim=-1)
                w = w / w.sum(-1, keepdim=True)
                order = torch.argsort(sel, dim=-1)
                out.update(layer_in=rows(x), attn_out=rows(attn), moe_in=rows(mid), moe_out=rows(moe),
                           layer_out=rows(mid + moe),
                           experts=torch.gather(sel, 1, order).tolist(),
                           expert_weights=[rows(r) for r in torch.gather(w, 1, order)])
            x, _, _ = layer(x, cos, sin)
        logits = model(torch.tensor([ids]))[0][0, -1]
    lse = torch.logsumexp(logits.double(), dim=0).item()
    top = torch.topk(logits, a.top)
    doc = {
        "source": "tools/train/dump_modules.py %s --layer %d --tokens %d (train.py's PyTorch Mixtral, f32)"
                  % (a.model, a.layer, a.tokens),
        "layer": a.layer, "dim": targs.dim, "tokens": ids,
        **out,
        "last_logits": {"lse": lse, "top": [[int(i), float("%.9g" % v)] for i, v in zip(top.indices.tolist(), top.values.tolist())]},
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print("wrote %s: %d tokens, layer %d, max |layer_out| %.3f, route %s"
          % (a.out, T, a.layer, max(abs(v) for v in out["layer_out"]), out["experts"]))


if __name__ == "__main__":
    main()
