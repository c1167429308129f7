#!/usr/bin/env python3
"""Trains a small Mixtral (8 experts, top-2, GQA, RoPE theta 1e6, RMSNorm, SwiGLU experts) on
demo/a-tale-of-two-cities.txt with the real Mistral tokenizer, and writes it in the HF layout.

Deterministic from --seed (same thread count, same torch build). The last --heldout fraction of the
book (cut at a line boundary) is never trained on; it is written next to the model as heldout.txt
and scored the way llama-perplexity scores a file (non-overlapping BOS-led chunks of --ctx tokens,
second half of each scored), so `mixtral perplexity` can be held to the same figure.
Run with Debian's python3 (python3-torch, python3-numpy, python3-sentencepiece)."""
import argparse, json, math, os, shutil, struct, sys, time

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default="demo/a-tale-of-two-cities.txt")
    p.add_argument("--tokenizer", default="tests/data/tiny-mixtral/hf/tokenizer.model")
    p.add_argument("--out", default="models/tale-mixtral")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--aux-coef", type=float, default=0.02, help="router load-balancing loss weight")
    p.add_argument("--heldout", type=float, default=0.10)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval-chunks", type=int, default=0, help="0 = all held-out chunks")
    p.add_argument("--rope-theta", type=float, default=1e6)
    p.add_argument("--eps", type=float, default=1e-5)
    return p.parse_args()


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.nh, self.nkv, self.hd = a.heads, a.kv_heads, a.dim // a.heads
        self.q_proj = nn.Linear(a.dim, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(a.dim, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(a.dim, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, a.dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        # HF Mixtral's rotate-half RoPE, so the saved q/k weights are already in the HF layout.
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True) if hasattr(F, "scaled_dot_product_attention") \
            else self._attn(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))

    @staticmethod
    def _attn(q, k, v):
        T = q.shape[2]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        mask = torch.full((T, T), float("-inf")).triu(1)
        return torch.softmax(s + mask, dim=-1) @ v


class Expert(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.w1 = nn.Linear(a.dim, a.hidden, bias=False)
        self.w2 = nn.Linear(a.hidden, a.dim, bias=False)
        self.w3 = nn.Linear(a.dim, a.hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoe(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.E, self.k = a.experts, a.top_k
        self.gate = nn.Linear(a.dim, a.experts, bias=False)
        self.experts = nn.ModuleList([Expert(a) for _ in range(a.experts)])

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        w, sel = torch.topk(probs, self.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.E):
            tok, slot = torch.where(sel == e)
            if tok.numel() == 0:
                continue
            y = self.experts[e](x[tok]) * w[tok, slot].unsqueeze(-1)
            out.index_add_(0, tok, y)
        # Switch/Mixtral load balancing: E * sum_e (share of top-k slots to e) * (mean router prob of e).
        share = F.one_hot(sel, self.E).float().mean(0)  # [k, E]
        aux = self.E * (share * probs.mean(0).unsqueeze(0)).sum()
        counts = torch.bincount(sel.reshape(-1), minlength=self.E)
        return out.view(shape), aux, counts


class Layer(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.self_attn = Attention(a)
        self.block_sparse_moe = SparseMoe(a)
        self.input_layernorm = RMSNorm(a.dim, a.eps)
        self.post_attention_layernorm = RMSNorm(a.dim, a.eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        m, aux, counts = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + m, aux, counts


class Inner(nn.Module):
    def __init__(self, a, vocab):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, a.dim)
        self.layers = nn.ModuleList([Layer(a) for _ in range(a.layers)])
        self.norm = RMSNorm(a.dim, a.eps)


class Mixtral(nn.Module):
    """The output head holds a row for each token id the training text uses, plus one row shared by
    all other ids. Scoring that shared row with + log(count of other ids) gives exactly the full
    32000-way softmax of the exported model (whose other rows are all copies of it), at a quarter
    of the cost, since the training text never targets those ids."""

    def __init__(self, a, vocab, used):
        super().__init__()
        self.a = a
        self.vocab = vocab
        self.model = Inner(a, vocab)
        self.register_buffer("used", torch.tensor(used, dtype=torch.long), persistent=False)
        remap = torch.full((vocab,), len(used), dtype=torch.long)
        remap[self.used] = torch.arange(len(used))
        self.register_buffer("remap", remap, persistent=False)  # token id -> head row
        self.head_used = nn.Parameter(torch.empty(len(used), a.dim))
        self.head_other = nn.Parameter(torch.empty(1, a.dim))
        self.log_other = math.log(vocab - len(used))
        self.full_head = None
        hd = a.dim // a.heads
        inv = 1.0 / (a.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.arange(a.ctx, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, ids):
        T = ids.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.model.embed_tokens(ids)
        auxes, counts = [], []
        for layer in self.model.layers:
            x, aux, c = layer(x, cos, sin)
            auxes.append(aux)
            counts.append(c)
        h = self.model.norm(x)
        if self.full_head is not None:  # the exported 32000-row head, for the final score
            return h @ self.full_head.t(), torch.stack(auxes).mean(), counts
        logits = torch.cat((h @ self.head_used.t(), h @ self.head_other.t() + self.log_other), dim=-1)
        return logits, torch.stack(auxes).mean(), counts

    def full_lm_head(self):
        w = self.head_other.detach().expand(self.vocab, -1).clone()
        w[self.used] = self.head_used.detach()
        return w

    def hf_state_dict(self):
        sd = {k: v.detach().float() for k, v in self.state_dict().items() if not k.startswith("head_")}
        sd["lm_head.weight"] = self.full_lm_head()
        return sd


def init_weights(model, a):
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            continue
        std = 0.02
        if name.endswith("o_proj.weight") or name.endswith("w2.weight"):
            std = 0.02 / math.sqrt(2 * a.layers)  # GPT-2 style: residual writes shrink with depth
        nn.init.normal_(p, mean=0.0, std=std)


def split_text(text, frac):
    """Cuts at the first line break after (1 - frac) of the characters."""
    cut = text.index("\n", int(len(text) * (1 - frac))) + 1
    return text[:cut], text[cut:]


def ppl_chunks(model, tokens, ctx, bos, max_chunks=0):
    """llama-perplexity's rule: chunk i is tokens[i*ctx:(i+1)*ctx] with its first token replaced by
    BOS; logits at positions ctx/2 .. ctx-2 predict the next token. Returns (ppl, nlls, expert counts)."""
    n = len(tokens) // ctx
    if max_chunks:
        n = min(n, max_chunks)
    nll, counts_acc = [], None
    model.eval()
    with torch.no_grad():
        for i in range(n):
            ids = torch.tensor(tokens[i * ctx:(i + 1) * ctx], dtype=torch.long)[None]
            ids[0, 0] = bos
            logits, _, counts = model(ids)
            c = torch.stack(counts)
            counts_acc = c if counts_acc is None else counts_acc + c
            lp = torch.log_softmax(logits[0].double(), dim=-1)
            first = ctx // 2
            tgt = torch.tensor(tokens[i * ctx + first + 1:(i + 1) * ctx], dtype=torch.long)
            if model.full_head is None:
                # the shared row stands for all other ids: its log-prob less log(count) is each one's
                lp[:, -1] -= model.log_other
                tgt = model.remap[tgt]
            nll.extend((-lp[first:ctx - 1].gather(1, tgt[:, None])[:, 0]).tolist())
    model.train()
    return math.exp(sum(nll) / len(nll)), nll, counts_acc


def histogram(counts_per_layer):
    lines = []
    for i, c in enumerate(counts_per_layer):
        tot = c.sum().item()
        lines.append("layer %d: " % i + " ".join("%5.1f%%" % (100.0 * v / tot) for v in c.tolist()))
    return lines


def save_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().to(torch.bfloat16).view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def hf_config(a, vocab):
    return {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": a.dim, "initializer_range": 0.02, "intermediate_size": a.hidden,
        "max_position_embeddings": a.ctx, "num_attention_heads": a.heads,
        "num_experts_per_tok": a.top_k, "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads, "num_local_experts": a.experts,
        "output_router_logits": False, "rms_norm_eps": a.eps, "rope_theta": a.rope_theta,
        "router_aux_loss_coef": a.aux_coef, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": vocab,
    }


def export(model, a, vocab, out):
    os.makedirs(out, exist_ok=True)
    # The tokenizer files travel with the weights (tokenizer_config.json when next to the model).
    src = os.path.dirname(a.tokenizer)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
        f.write("\n")
    sd = model.hf_state_dict()
    save_safetensors(os.path.join(out, "model.safetensors"), sd)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(a, vocab), f, indent=2)
        f.write("\n")


def round_to_bf16_(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def main():
    a = parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    vocab, bos = sp.get_piece_size(), sp.bos_id()
    text = open(a.text, encoding="utf-8").read()
    train_text, held_text = split_text(text, a.heldout)
    train_tok = np.array(sp.encode(train_text), dtype=np.int64)
    held_tok = [bos] + sp.encode(held_text)  # as llama-perplexity tokenizes a file: BOS first
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(held_text)
    print("train: %d chars %d tokens; held-out: %d chars %d tokens (%d chunks of %d)" % (
        len(train_text), len(train_tok), len(held_text), len(held_tok), len(held_tok) // a.ctx, a.ctx), flush=True)

    used = sorted(set(train_tok.tolist()) | {bos, sp.eos_id()})
    model = Mixtral(a, vocab, used)
    init_weights(model, a)
    nparams = sum(p.numel() for p in model.parameters())
    nparams += (vocab - len(used) - 1) * a.dim  # as exported: a full 32000-row lm_head
    print("params (exported): %.2fM; head rows trained: %d + 1 shared" % (nparams / 1e6, len(used)), flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": nodecay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    log = open(os.path.join(a.out, "train_log.tsv"), "w")
    log.write("step\tlr\ttrain_loss\taux_loss\theldout_ppl\telapsed_s\n")
    t0 = time.time()
    counts_acc = None
    n_win = len(train_tok) - a.ctx
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = rng.integers(0, n_win, size=a.batch)
        seqs = np.stack([train_tok[s:s + a.ctx + 1] for s in starts])
        ids = torch.from_numpy(seqs[:, :-1].copy())
        ids[:, 0] = bos  # every window starts with BOS, as every scored chunk does
        tgt = model.remap[torch.from_numpy(seqs[:, 1:].copy())]
        logits, aux, counts = model(ids)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        loss = ce + a.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        c = torch.stack(counts)
        counts_acc = c if counts_acc is None else counts_acc + c
        heldout = ""
        last = step + 1 == a.steps
        if (step + 1) % a.eval_every == 0 or last:
            ppl, _, _ = ppl_chunks(model, held_tok, a.ctx, bos, a.eval_chunks)
            heldout = "%.4f" % ppl
        print("step %d lr %.2e loss %.4f aux %.4f %s %.0fs" % (
            step + 1, lr_at(step), ce.item(), aux.item(), ("heldout_ppl " + heldout) if heldout else "",
            time.time() - t0), flush=True)
        log.write("%d\t%.3e\t%.4f\t%.4f\t%s\t%.0f\n" % (step + 1, lr_at(step), ce.item(), aux.item(), heldout,
                                                       time.time() - t0))
        log.flush()
        if heldout:
            print("expert usage (top-%d slots, steps since last report):" % a.top_k)
            print("\n".join(histogram(counts_acc)), flush=True)
            counts_acc = None
        if (step + 1) % a.save_every == 0 or last:
            export(model, a, vocab, a.out)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1},
                       os.path.join(a.out + ".ckpt.pt"))
            print("saved %s at step %d" % (a.out, step + 1), flush=True)

    # The shipped weights are bf16: score the rounded model, so the engine's f32 run of the file can
    # be held to this figure.
    round_to_bf16_(model)
    model.full_head = model.full_lm_head()
    ppl, nll, held_counts = ppl_chunks(model, held_tok, a.ctx, bos)
    n = len(nll)
    mean = sum(nll) / n
    sd = math.sqrt(max(0.0, sum(v * v for v in nll) / n - mean * mean) / max(1, n - 1))
    hist = histogram(held_counts)
    print("expert usage on the held-out chunks (share of top-%d slots):" % a.top_k)
    print("\n".join(hist), flush=True)
    summary = {
        "heldout_ppl_bf16_weights": ppl, "heldout_ppl_error": ppl * sd, "heldout_scored_tokens": n,
        "heldout_chunks": len(held_tok) // a.ctx, "ctx": a.ctx, "train_tokens": int(len(train_tok)),
        "heldout_tokens": len(held_tok), "steps": a.steps, "seed": a.seed, "params": nparams,
        "seconds": time.time() - t0, "heldout_expert_usage": hist, "train_chars": len(train_text), "heldout_chars": len(held_text),
    }
    print(json.dumps(summary, indent=2), flush=True)
    with open(os.path.join(a.out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
