#!/usr/bin/env python3
"""Train SentencePiece models with the `sentencepiece` library and tokenize held-out lines.

usage: spm_reference.py <work dir>   (reads train.txt and heldout.txt there)
Writes <kind>.model for kind in bpe, unigram, and prints JSON
{kind: {"ids": [[...]], "decoded": [...]}} on stdout.
"""
import json
import os
import sys

import sentencepiece as spm

work = sys.argv[1]
with open(os.path.join(work, "heldout.txt"), encoding="utf-8") as f:
    heldout = f.read().split("\n")

SETTINGS = {
    # Llama / Atom / ChatGLM style: identity normalisation, spaces kept, byte fallback.
    "bpe": dict(model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=True, byte_fallback=True, split_digits=True),
    # The library's defaults: NFKC charsmap, extra whitespace removed; byte fallback on.
    "unigram": dict(model_type="unigram", byte_fallback=True),
}

out = {}
for kind, extra in SETTINGS.items():
    prefix = os.path.join(work, kind)
    spm.SentencePieceTrainer.train(
        input=os.path.join(work, "train.txt"), model_prefix=prefix, vocab_size=1200,
        hard_vocab_limit=False, character_coverage=0.9995, user_defined_symbols=["[微笑]", "[表情]"],
        num_threads=1, minloglevel=2, **extra)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    ids = [sp.encode(line) for line in heldout]
    out[kind] = {"ids": ids, "decoded": [sp.decode(i) for i in ids]}
print(json.dumps(out, ensure_ascii=False))
