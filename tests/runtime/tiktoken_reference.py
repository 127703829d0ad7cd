#!/usr/bin/env python3
"""Train a tiktoken BPE with the `tiktoken` library and tokenize held-out lines with it.

usage: tiktoken_reference.py <work dir>   (reads train.txt and heldout.txt there)
Writes tokenizer.model there in tiktoken's rank format (`<base64 token> <rank>` per line, as
GLM-4-9B-Chat ships it) and prints JSON {"specials": {text: id}, "ids": [[...]],
"decoded": [...]} on stdout; held-out lines are encoded with every special allowed, as
transformers' ChatGLM4Tokenizer splits them out.
"""
import base64
import json
import os
import sys

import collections

import regex
import tiktoken

# tokenization_chatglm.py (GLM-4-9B-Chat)'s pat_str.
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|observation|>"]

work = sys.argv[1]
with open(os.path.join(work, "train.txt"), encoding="utf-8", newline="") as f:
    train = f.read()
with open(os.path.join(work, "heldout.txt"), encoding="utf-8", newline="") as f:
    heldout = f.read().split("\n")



def train_ranks(text, vocab_size):
    """Byte-level BPE: all 256 bytes, then the most frequent adjacent pair within a
    pre-token merges into the next rank, until `vocab_size` or no pair repeats."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([b]) for b in w.encode("utf-8")] for w in regex.findall(PATTERN, text)]
    while len(ranks) < vocab_size:
        pairs = collections.Counter(p for w in words for p in zip(w, w[1:]))
        pairs = [(n, p) for p, n in pairs.items() if n > 1 and p[0] + p[1] not in ranks]
        if not pairs:
            break
        _, best = max(pairs)
        ranks[best[0] + best[1]] = len(ranks)
        merged = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged.append(out)
        words = merged
    return ranks


ranks = train_ranks(train, int(os.environ.get("VOCAB", "700")))
with open(os.path.join(work, "tokenizer.model"), "w", encoding="ascii") as f:
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        f.write(f"{base64.b64encode(token).decode()} {rank}\n")
first = max(ranks.values()) + 1
specials = {s: first + i for i, s in enumerate(SPECIALS)}
enc = tiktoken.Encoding(name="glm4-test", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=specials)
ids = [enc.encode(line, allowed_special="all") for line in heldout]
print(json.dumps({"specials": specials, "ids": ids, "decoded": [enc.decode(i) for i in ids]}, ensure_ascii=False))
