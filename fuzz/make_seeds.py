#!/usr/bin/env python3
"""Writes the fuzzers' seed inputs into OUT/<harness>/ from the fixtures in tests/data, plus small
hand-built files where the fixtures are too big to mutate quickly (a 24 MB GGUF, 9 MB .pth).
The seeds are then minimized into fuzz/corpus/ with -merge=1 (see fuzz/README.md); this script
is only needed again when a format grows a feature worth seeding. Standard library only."""
import json, os, struct, sys, zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
TINY = os.path.join(DATA, "tiny-mixtral")

# The small model every hand-built seed describes; fuzz/fuzz_util.h has the same params.json.
DIM, LAYERS, HEADS, KV, HEAD_DIM, FFN, EXPERTS, TOPK = 8, 1, 2, 1, 4, 16, 2, 2


def write(out, harness, name, data):
    d = os.path.join(out, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def vocab():
    # Control tokens, the 256 byte pieces, and a few words: enough for SentencePiece to build.
    pieces = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    pieces += ["\u2581", "\u2581a", "\u2581the", "he", "llo", "\u2581[INST]", "[/INST]", "\u00e9"]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 259)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces) - 259)]
    return pieces, scores, types


def model_tensors(vocab_n):
    """(name, shape outermost first) for the hand-built checkpoints, our canonical naming."""
    q, kv = HEADS * HEAD_DIM, KV * HEAD_DIM
    t = [("tok_embeddings", (vocab_n, DIM)), ("norm", (DIM,)), ("output", (vocab_n, DIM))]
    for l in range(LAYERS):
        p = "layers.%d." % l
        t += [(p + "attention_norm", (DIM,)), (p + "ffn_norm", (DIM,)), (p + "attention.wq", (q, DIM)),
              (p + "attention.wk", (kv, DIM)), (p + "attention.wv", (kv, DIM)),
              (p + "attention.wo", (DIM, q)), (p + "gate", (EXPERTS, DIM))]
        for e in range(EXPERTS):
            t += [(p + "experts.%d.w1" % e, (FFN, DIM)), (p + "experts.%d.w3" % e, (FFN, DIM)),
                  (p + "experts.%d.w2" % e, (DIM, FFN))]
    return t


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


# ---- safetensors -------------------------------------------------------------------------------

def safetensors_bytes(header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def shrink_safetensors(path):
    """The fixture's header (real names and dtypes) with every tensor cut to one element."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    out, off = {}, 0
    for name, v in header.items():
        if name == "__metadata__":
            out[name] = v
            continue
        size = {"F32": 4, "F16": 2, "BF16": 2}.get(v["dtype"], 4)
        out[name] = {"dtype": v["dtype"], "shape": [1], "data_offsets": [off, off + size]}
        off += size
    return safetensors_bytes(out, bytes(off))


# ---- GGUF ----------------------------------------------------------------------------------------

def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gkv(key, typ, value):
    enc = {4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
    out = gstr(key) + struct.pack("<I", typ)
    if typ == 8:
        return out + gstr(value)
    if typ == 9:
        et, items = value
        out += struct.pack("<IQ", et, len(items))
        for it in items:
            out += gstr(it) if et == 8 else struct.pack(enc[et], it)
        return out
    return out + struct.pack(enc[typ], value)


def gguf_bytes(merged=True, with_vocab=True, arch="llama"):
    pieces, scores, types = vocab()
    kv = [gkv("general.architecture", 8, arch), gkv("general.alignment", 4, 32),
          gkv(arch + ".embedding_length", 4, DIM), gkv(arch + ".block_count", 4, LAYERS),
          gkv(arch + ".attention.head_count", 4, HEADS), gkv(arch + ".attention.head_count_kv", 4, KV),
          gkv(arch + ".feed_forward_length", 4, FFN), gkv(arch + ".expert_count", 4, EXPERTS),
          gkv(arch + ".expert_used_count", 4, TOPK), gkv(arch + ".rope.freq_base", 6, 1e6),
          gkv(arch + ".attention.layer_norm_rms_epsilon", 6, 1e-5), gkv(arch + ".context_length", 4, 64)]
    if with_vocab:
        kv += [gkv("tokenizer.ggml.model", 8, "llama"), gkv("tokenizer.ggml.tokens", 9, (8, pieces)),
               gkv("tokenizer.ggml.scores", 9, (6, scores)), gkv("tokenizer.ggml.token_type", 9, (5, types)),
               gkv("tokenizer.ggml.bos_token_id", 4, 1), gkv("tokenizer.ggml.eos_token_id", 4, 2),
               gkv("tokenizer.ggml.add_space_prefix", 7, True)]
    else:
        kv += [gkv(arch + ".vocab_size", 4, len(pieces))]
    n_vocab = len(pieces)
    q, kvr = HEADS * HEAD_DIM, KV * HEAD_DIM
    tensors = [("token_embd.weight", (n_vocab, DIM)), ("output_norm.weight", (DIM,)),
               ("output.weight", (n_vocab, DIM))]
    for l in range(LAYERS):
        b = "blk.%d." % l
        tensors += [(b + "attn_norm.weight", (DIM,)), (b + "ffn_norm.weight", (DIM,)),
                    (b + "attn_q.weight", (q, DIM)), (b + "attn_k.weight", (kvr, DIM)),
                    (b + "attn_v.weight", (kvr, DIM)), (b + "attn_output.weight", (DIM, q)),
                    (b + "ffn_gate_inp.weight", (EXPERTS, DIM))]
        for merged_name, single, rows, cols in (("ffn_gate_exps", "ffn_gate", FFN, DIM),
                                                ("ffn_up_exps", "ffn_up", FFN, DIM),
                                                ("ffn_down_exps", "ffn_down", DIM, FFN)):
            if merged:
                tensors.append((b + merged_name + ".weight", (EXPERTS, rows, cols)))
            else:
                tensors += [(b + "%s.%d.weight" % (single, e), (rows, cols)) for e in range(EXPERTS)]
    infos, off = b"", 0
    for name, shape in tensors:
        ne = list(reversed(shape))
        infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne)
        infos += struct.pack("<IQ", 0, off)  # F32
        off += (numel(shape) * 4 + 31) // 32 * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + infos
    head += bytes((-len(head)) % 32)
    return head + bytes(off)


# ---- torch .pth (zip + pickle), written the way torch.save lays it out ------------------------

def pickle_state_dict(tensors):
    def s(x):
        b = x.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def i(x):
        return b"K" + bytes([x]) if x < 256 else b"J" + struct.pack("<i", x)

    out = b"\x80\x02" + b"ccollections\nOrderedDict\nq\x00)Rq\x01("
    for key, (name, shape) in enumerate(tensors):
        stride, acc = [], 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        out += s(name) + b"ctorch._utils\n_rebuild_tensor_v2\n("
        out += b"(" + s("storage") + b"ctorch\nFloatStorage\n" + s(str(key)) + s("cpu") + i(numel(shape)) + b"tQ"
        out += i(0) + b"(" + b"".join(i(d) for d in shape) + b"t(" + b"".join(i(d) for d in stride) + b"t"
        out += b"\x89ccollections\nOrderedDict\n)RtR"
    return out + b"u."


def pth_bytes(tensors, archive="consolidated"):
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(archive + "/data.pkl", pickle_state_dict(tensors))
        z.writestr(archive + "/byteorder", "little")
        for key, (_, shape) in enumerate(tensors):
            z.writestr(archive + "/data/%d" % key, bytes(4 * numel(shape)))
        z.writestr(archive + "/version", "3\n")
    return buf.getvalue()


def pth_names(tensors):
    """Canonical names as the per-expert .pth release spells them."""
    out = []
    for name, shape in tensors:
        if ".experts." in name:
            l, e, w = name.split(".")[1], name.split(".")[3], name.split(".")[4]
            name = "layers.%s.feed_forward.experts.%s.%s" % (l, e, w)
        elif name.endswith(".gate"):
            name = name.replace(".gate", ".feed_forward.gate")
        out.append((name + ".weight", shape))
    return out


def main(out):
    pieces, scores, types = vocab()
    # safetensors: real names from the fixtures, tiny data.
    write(out, "safetensors", "hf-shard1", shrink_safetensors(os.path.join(TINY, "hf", "model-00001-of-00002.safetensors")))
    write(out, "safetensors", "hf-shard2", shrink_safetensors(os.path.join(TINY, "hf", "model-00002-of-00002.safetensors")))
    write(out, "safetensors", "mistral", shrink_safetensors(os.path.join(TINY, "mistral", "consolidated.safetensors")))
    write(out, "safetensors", "meta", safetensors_bytes({"__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}, bytes(8)))
    # index: the fixture's, and one naming the shards in another order.
    with open(os.path.join(TINY, "hf", "model.safetensors.index.json")) as f:
        idx = f.read()
    write(out, "st_index", "fixture", idx)
    j = json.loads(idx)
    write(out, "st_index", "one-shard", json.dumps({"metadata": {"total_size": 1},
        "weight_map": {k: "model-00001-of-00002.safetensors" for k in list(j["weight_map"])[:3]}}))
    # GGUF: hand-built small models, and the small quantized fixtures (tensor tables of many types).
    write(out, "gguf", "merged", gguf_bytes(merged=True))
    write(out, "gguf", "per-expert", gguf_bytes(merged=False))
    write(out, "gguf", "no-vocab-mixtral", gguf_bytes(with_vocab=False, arch="mixtral"))
    for name in ("quant-vectors.gguf", "kquant-ref.gguf"):
        with open(os.path.join(DATA, name), "rb") as f:
            write(out, "gguf", name, f.read())
    # torch: a small .pth matching fuzz_util.h's params.json; pickles from the real fixtures.
    tensors = pth_names(model_tensors(len(pieces)))
    write(out, "torch", "small.pth", pth_bytes(tensors))
    write(out, "pickle", "small.pkl", pickle_state_dict(tensors))
    for rel in ("pth/consolidated.00.pth", "pth-zip64/consolidated.00.pth", "pt-stacked/consolidated.00.pt"):
        with zipfile.ZipFile(os.path.join(TINY, rel)) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
            write(out, "pickle", rel.replace("/", "-") + ".pkl", z.read(pkl))
    # configs: the fixtures' JSON, a tokenizer.json vocabulary and a small cache manifest.
    write(out, "config", "config.json", open(os.path.join(TINY, "hf", "config.json")).read())
    write(out, "config", "params.json", open(os.path.join(TINY, "mistral", "params.json")).read())
    write(out, "config", "tokenizer.json", json.dumps({"pieces": pieces[:8] + [{"hex": "ff00"}],
        "scores": scores[:9], "types": types[:9], "bos_id": 1, "eos_id": 2, "unk_id": 0,
        "add_dummy_prefix": True}))
    # Files that need the engine to make (a cache manifest and tokenizer.json from
    # `mixtral repack --dtype q8 --ranks 2` of the "merged" GGUF seed) are kept as they are.
    extra = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extra-seeds")
    for harness in os.listdir(extra):
        for name in os.listdir(os.path.join(extra, harness)):
            with open(os.path.join(extra, harness, name), "rb") as f:
                write(out, harness, name, f.read())
    # tokenizer: the test texts, one per file.
    with open(os.path.join(DATA, "tokenizer-cases.json")) as f:
        cases = json.load(f)
    for k, c in enumerate(cases["plain"][:24]):
        write(out, "tokenizer", "case%02d" % k, c["text"])
    # server: request bodies of both endpoints.
    bodies = [
        {"prompt": "Hello", "max_tokens": 8},
        {"prompt": [1, 22557, 28723], "max_tokens": 4, "temperature": 0, "stop": ["\n"]},
        {"prompt": "Hi", "stream": True, "stream_options": {"include_usage": True}, "top_p": 0.9, "seed": 3},
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}],
         "temperature": 0.7, "stop": "x", "n": 1},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}], "max_completion_tokens": 2},
    ]
    bodies += [{"messages": c["messages"], "max_tokens": 1} for c in cases["chat"][:4]]
    for k, b in enumerate(bodies):
        write(out, "server_api", "body%d" % k, json.dumps(b))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/seeds")
