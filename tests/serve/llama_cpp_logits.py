"""Print llama.cpp's logits after a token sequence, as JSON: llama_cpp_logits.py GGUF '[ids]'."""
import json
import sys

from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=2, logits_all=True, verbose=False)
toks = json.loads(sys.argv[2])
llm.eval(toks)
print(json.dumps([float(x) for x in llm.scores[len(toks) - 1]]))
