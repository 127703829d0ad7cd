"""Drive a running `avatar serve` with the official `openai` Python client.

Usage: openai_client.py BASE_URL API_KEY   (BASE_URL like http://127.0.0.1:1234/v1)
Exits non-zero with a message on the first failed check; prints OK at the end.
"""
import sys
import concurrent.futures as cf

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


# /v1/models
models = client.models.list()
ids = [m.id for m in models.data]
check(ids == ["avatar-test"], f"models.list returned {ids}")

# Non-streaming, chatgpt-on-wechat style: empty system message first, no max_tokens.
r = client.chat.completions.create(
    model="anything",
    messages=[{"role": "system", "content": ""}, {"role": "user", "content": "hello"}],
    temperature=0.7, top_p=0.9, frequency_penalty=0.1, presence_penalty=0.1,
)
check(r.usage is not None and r.usage.completion_tokens >= 1, f"usage {r.usage}")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage sum")
check(isinstance(r.choices[0].message.content, str), "content is a string")
check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason {r.choices[0].finish_reason}")
check(r.choices[0].message.role == "assistant", "role")
extra = r.choices[0].message.model_extra or {}
check(isinstance(extra.get("bubbles"), list), "bubbles extension field present")

# List-of-text-parts content (AstrBot/LangBot), max_tokens, stop, seed: same seed, same reply.
kw = dict(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": " again"}]}],
          max_tokens=6, seed=42, temperature=1.0, stop=["\n\n"])
a = client.chat.completions.create(**kw)
b = client.chat.completions.create(**kw)
check(a.choices[0].message.content == b.choices[0].message.content, "same seed gives the same reply")
check(1 <= a.usage.completion_tokens <= 6, f"max_tokens respected: {a.usage.completion_tokens}")
c = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_completion_tokens=3, n=2)
check(len(c.choices) == 2 and [ch.index for ch in c.choices] == [0, 1], "n=2 gives two choices")

# Streaming with include_usage.
chunks = list(client.chat.completions.create(
    model="m", messages=[{"role": "user", "content": "stream please"}], max_tokens=12, stream=True,
    stream_options={"include_usage": True},
))
check(chunks[0].choices[0].delta.role == "assistant", "role comes first")
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(finishes and finishes[-1] in ("stop", "length"), f"finish_reason in stream: {finishes}")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1, "usage chunk last")
check(chunks[-1].choices == [], "usage chunk has no choices")
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(isinstance(text, str), "streamed text")

# Streaming without include_usage still ends properly.
n = 0
for ch in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "s"}], max_tokens=4, stream=True):
    n += 1
check(n >= 2, "plain stream yields chunks")

# Errors arrive as typed exceptions with OpenAI-shaped bodies.
try:
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], temperature=5)
    check(False, "temperature=5 must fail")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "temperature", f"400 body {e.body}")
try:
    client.chat.completions.create(model="m", messages=[])
    check(False, "empty messages must fail")
except openai.BadRequestError as e:
    check(e.body.get("param") == "messages", f"400 body {e.body}")
try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key must fail")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "401")

# A trailing slash in the base URL (requests go to /v1//chat/completions).
slash = openai.OpenAI(base_url=base + "/", api_key=key, max_retries=0)
r = slash.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2)
check(r.usage.completion_tokens >= 1, "trailing-slash base URL works")

# 100 parallel requests: all answered, none lost.
def one(i):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"request {i}"}], max_tokens=8)
    return r.usage.completion_tokens

with cf.ThreadPoolExecutor(max_workers=100) as pool:
    results = list(pool.map(one, range(100)))
check(len(results) == 100 and all(n >= 1 for n in results), "100 parallel requests answered")
print("OK")
