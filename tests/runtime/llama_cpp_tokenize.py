"""Print llama.cpp's token ids for lines of text, as JSON: llama_cpp_tokenize.py GGUF LINES.json

The GGUF is loaded for its vocabulary only; specials written in the text map to their ids and
no BOS is added, as avatar's tokenizer encodes."""
import json
import sys

from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
with open(sys.argv[2], encoding="utf-8") as f:
    lines = json.load(f)
print(json.dumps([llm.tokenize(line.encode("utf-8"), add_bos=False, special=True) for line in lines]))
