"""Makes a LoRA adapter model through a running `hearth serve` with the official `ollama`
Python client, unchanged: the adapter file uploaded with `create_blob`, the model made with
`create(from_=..., adapters=...)` (tests/server_python.rs starts the server and runs this).

usage: adapters.py BASE_URL BASE_MODEL ADAPTER_GGUF
Exits non-zero with the failing check's message; prints `ok: N checks` at the end.
"""

import sys

import ollama

BASE, MODEL, ADAPTER = sys.argv[1], sys.argv[2], sys.argv[3]
GREEDY = {"temperature": 0, "num_predict": 16}
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


client = ollama.Client(host=BASE)
digest = client.create_blob(ADAPTER)
check(digest.startswith("sha256:"), digest)
done = client.create(model="mybot", from_=MODEL, adapters={"mybot-lora.gguf": digest})
check(done.status == "success", f"create: {done}")
try:
    client.create(model="broken", from_=MODEL, adapters={"x.gguf": "sha256:" + "0" * 64})
    raise AssertionError("an adapter blob that was never uploaded was accepted")
except ollama.ResponseError as e:
    check(e.status_code == 400, f"expected 400, got {e.status_code}: {e}")

prompt = "Once upon a time"
base = client.generate(model=MODEL, prompt=prompt, options=GREEDY).response
adapted = client.generate(model="mybot", prompt=prompt, options=GREEDY).response
check(base != adapted, f"the adapter changes the answer: {base!r}")
again = client.generate(model="mybot", prompt=prompt, options=GREEDY).response
check(again == adapted, "greedy answers repeat")
names = {m.model for m in client.ps().models}
check("mybot:latest" in names, f"ps: {names}")
check(any(m.model.startswith("mybot") for m in client.list().models), "listed")
print(f"ok: {checks} checks")
