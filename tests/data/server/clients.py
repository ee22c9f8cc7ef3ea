"""Drives a running `hearth serve` with the official `ollama` and `openai` Python clients,
unchanged (tests/server_python.rs starts the server and runs this in the venv `.ci/run` makes).

usage: clients.py BASE_URL API_KEY MODEL [JSON_MODEL]
Exits non-zero with the failing check's message; prints `ok: N checks` at the end.
"""

import json
import math
import sys
from typing import Literal

import ollama
import openai
import pydantic

BASE, KEY, MODEL = sys.argv[1], sys.argv[2], sys.argv[3]
# A real model for the open-ended JSON checks, when the test found one.
JSON_MODEL = sys.argv[4] if len(sys.argv) > 4 else None
GREEDY = {"temperature": 0, "num_predict": 12}
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def raises(fn, status, exc=ollama.ResponseError):
    try:
        fn()
    except exc as e:
        code = getattr(e, "status_code", None)
        check(code == status, f"expected status {status}, got {code}: {e}")
        return e
    raise AssertionError(f"expected an error with status {status}")


# ---- ollama ----
ol = ollama.Client(host=BASE, headers={"Authorization": f"Bearer {KEY}"})

gen = ol.generate(model=MODEL, prompt="Once upon a time", options=GREEDY)
check(gen.done and gen.response, f"generate answered: {gen}")
check(gen.done_reason in ("stop", "length"), gen.done_reason)
check(1 <= gen.eval_count <= 12 and gen.prompt_eval_count > 0, gen)
check(gen.context and len(gen.context) > gen.eval_count, "generate returns its context")
check(gen.total_duration > 0 and gen.eval_duration > 0, "durations in ns")
parts = list(ol.generate(model=MODEL, prompt="Once upon a time", options=GREEDY, stream=True))
check("".join(p.response for p in parts) == gen.response, "streamed generate == whole")
check(parts[-1].done and all(not p.done for p in parts[:-1]), "only the last chunk is done")

msgs = [{"role": "user", "content": "Hello there"}]
chat = ol.chat(model=MODEL, messages=msgs, options=GREEDY)
check(chat.message.role == "assistant" and chat.message.content, chat)
parts = list(ol.chat(model=MODEL, messages=msgs, options=GREEDY, stream=True))
check("".join(p.message.content for p in parts) == chat.message.content, "streamed chat == whole")
follow = ol.chat(
    model=MODEL,
    messages=msgs + [chat.message, {"role": "user", "content": "And then?"}],
    options=GREEDY,
)
check(follow.message.content is not None, "a multi-turn chat answers")

names = [m.model for m in ol.list().models]
check(f"{MODEL}:latest" in names, names)
show = ol.show(MODEL)
check(show.modelfile and "FROM" in show.modelfile, "show has the Modelfile")
check(show.details.family and show.details.format == "gguf", show.details)
ps = ol.ps()
loaded = [m for m in ps.models if m.model == f"{MODEL}:latest"]
check(loaded and loaded[0].size > 0 and loaded[0].expires_at is not None, ps)

ol.copy(MODEL, "client-copy")
check("client-copy:latest" in [m.model for m in ol.list().models], "copy made it")
created = ol.create(model="client-made", from_="client-copy", system="Be terse.",
                    parameters={"temperature": 0.5})
check(created.status == "success", created)
check("Be terse." in ol.show("client-made").modelfile, "create set the system prompt")
ol.delete("client-copy")
ol.delete("client-made")
names = [m.model for m in ol.list().models]
check("client-copy:latest" not in names and "client-made:latest" not in names, names)

# Errors: unknown models are 404 everywhere, bad input 400.
raises(lambda: ol.generate(model="nope", prompt="hi"), 404)
raises(lambda: ol.chat(model="nope", messages=msgs), 404)
raises(lambda: ol.show("nope"), 404)
raises(lambda: ol.delete("nope"), 404)
raises(lambda: ol.copy("nope", "x"), 404)
raises(lambda: ol.pull("nope"), 404)
raises(lambda: ol.generate(model="../etc", prompt="hi"), 400)
raises(lambda: ol.generate(model=MODEL, prompt="hi", options={"top_p": 7}), 400)
e = raises(lambda: ollama.Client(host=BASE).list(), 401)
check("Bearer" in str(e), "no key: 401 naming the scheme")

# ---- openai ----
oa = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY)

r = oa.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=12)
check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", r)
check(r.choices[0].message.content == chat.message.content, "openai chat == ollama chat")
check(r.usage.completion_tokens == chat.eval_count, r.usage)
check(r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason)
chunks = list(oa.chat.completions.create(
    model=MODEL, messages=msgs, temperature=0, max_tokens=12, stream=True,
    stream_options={"include_usage": True}, seed=7))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(text == chat.message.content, "streamed openai chat == whole")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.eval_count,
      "include_usage gives a final usage chunk")
r = oa.chat.completions.create(model=MODEL, messages=msgs, temperature=0,
                               max_completion_tokens=3, presence_penalty=0.5, top_p=0.9)
check(r.usage.completion_tokens <= 3, r.usage)

c = oa.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=12)
check(c.choices[0].text == gen.response, "openai completion == ollama generate")
parts = list(oa.completions.create(model=MODEL, prompt="Once upon a time", temperature=0,
                                   max_tokens=12, stream=True))
check("".join(p.choices[0].text for p in parts if p.choices) == gen.response, "streamed completion")

ids = [m.id for m in oa.models.list().data]
check(f"{MODEL}:latest" in ids, ids)
check(oa.models.retrieve(MODEL).id == f"{MODEL}:latest", "retrieve a model")
try:
    oa.chat.completions.create(model="nope", messages=msgs)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    check(e.status_code == 404, e)
try:
    oa.chat.completions.create(model=MODEL, messages=[])
    raise AssertionError("empty messages accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400, e)
try:
    oa.chat.completions.create(model=MODEL, messages=msgs, n=2, max_tokens=2)
    raise AssertionError("n = 2 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "n = 1" in e.message, e)
try:
    oa.models.retrieve("nope")
    raise AssertionError("an unknown model retrieved")
except openai.NotFoundError as e:
    check(e.code == "model_not_found", e)
try:
    openai.OpenAI(base_url=f"{BASE}/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401, e)

# ---- structured output ----
# A bounded schema: nano's greedy answer fits in a few tokens and must validate.
FRUIT = {"type": "object", "required": ["color", "ripe"], "additionalProperties": False,
         "properties": {"color": {"enum": ["red", "green", "yellow"]},
                        "ripe": {"type": "boolean"}}}
STRUCTURED = {"temperature": 0, "num_predict": 40}
fruit_msgs = [{"role": "user", "content": "Describe a banana."}]


def is_fruit(text):
    v = json.loads(text)
    return (isinstance(v, dict) and set(v) == {"color", "ripe"}
            and v["color"] in ("red", "green", "yellow") and isinstance(v["ripe"], bool))


r = ol.generate(model=MODEL, prompt="Describe a banana.", format=FRUIT, options=STRUCTURED)
check(r.done_reason == "stop" and is_fruit(r.response), f"generate with a schema: {r.response!r}")
r = ol.chat(model=MODEL, messages=fruit_msgs, format=FRUIT, options=STRUCTURED)
check(is_fruit(r.message.content), f"chat with a schema: {r.message.content!r}")
r = oa.chat.completions.create(
    model=MODEL, messages=fruit_msgs, temperature=0, max_tokens=40,
    response_format={"type": "json_schema", "json_schema": {"name": "fruit", "schema": FRUIT}})
check(is_fruit(r.choices[0].message.content), f"json_schema: {r.choices[0].message.content!r}")


class Fruit(pydantic.BaseModel):
    color: Literal["red", "green", "yellow"]
    ripe: bool


# The client's own structured-output path (a strict json_schema built from the model class).
r = oa.chat.completions.parse(model=MODEL, messages=fruit_msgs, temperature=0, max_tokens=40,
                              response_format=Fruit)
check(isinstance(r.choices[0].message.parsed, Fruit), f"parse(): {r.choices[0].message}")

# Any JSON object ("json", json_object) is open-ended, which nano's random weights never
# close; a real model copying an object does.
COPY = 'Repeat this JSON exactly: {"name": "Tom", "age": 30}'
if JSON_MODEL:
    r = ol.generate(model=JSON_MODEL, prompt=COPY, format="json", options=STRUCTURED)
    check(isinstance(json.loads(r.response), dict), f"format json: {r.response!r}")
    r = oa.chat.completions.create(
        model=JSON_MODEL, messages=[{"role": "user", "content": COPY}], temperature=0,
        max_tokens=40, response_format={"type": "json_object"})
    text = r.choices[0].message.content
    check(isinstance(json.loads(text), dict), f"json_object: {text!r}")
else:
    print("skipped: format json and json_object (no real model given)")

# ---- tools ----
# `toolbox` is nano under a template that reads `tools`; a schema makes its answer a call.
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string"}}}}}
CALL = {"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
        "properties": {"name": {"enum": ["get_weather"]},
                       "arguments": {"type": "object", "required": ["city"],
                                     "additionalProperties": False,
                                     "properties": {"city": {"enum": ["Rome", "Oslo"]}}}}}
ask = [{"role": "user", "content": "Weather in Rome?"}]
r = ol.chat(model="toolbox", messages=ask, tools=[WEATHER], format=CALL,
            options={"temperature": 0, "num_predict": 150})
calls = r.message.tool_calls or []
check(len(calls) == 1 and calls[0].function.name == "get_weather", f"tool call: {r.message}")
check(calls[0].function.arguments["city"] in ("Rome", "Oslo"), calls[0].function.arguments)
# The call and its result go back in as history.
r2 = ol.chat(model="toolbox", options=GREEDY, tools=[WEATHER], messages=ask + [
    r.message, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
check(r2.message.role == "assistant", r2)
e = raises(lambda: ol.chat(model=MODEL, messages=ask, tools=[WEATHER]), 400)
check("does not support tools" in str(e), e)
r = oa.chat.completions.create(
    model="toolbox", messages=ask, tools=[WEATHER], temperature=0, max_tokens=150,
    response_format={"type": "json_schema", "json_schema": {"name": "call", "schema": CALL}})
choice = r.choices[0]
check(choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice)
tc = choice.message.tool_calls[0]
check(tc.function.name == "get_weather" and json.loads(tc.function.arguments)["city"], tc)
r2 = oa.chat.completions.create(model="toolbox", tools=[WEATHER], max_tokens=4, messages=ask + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": tc.id, "content": "sunny"}])
check(r2.choices[0].message.role == "assistant", r2)

# ---- embeddings ----
texts = ["hello", "Once upon a time"]
e = ol.embed(model=MODEL, input=texts)
check(len(e.embeddings) == 2 and len(e.embeddings[0]) == len(e.embeddings[1]) > 0, e)
for v in e.embeddings:
    check(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4, "embeddings are L2-normalised")
check(e.prompt_eval_count > 0, e)


def close(a, b):
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-4


one = ol.embed(model=MODEL, input="hello")
check(close(one.embeddings[0], e.embeddings[0]), "a batch embeds each input as alone")
legacy = ol.embeddings(model=MODEL, prompt="hello")
check(close(list(legacy.embedding), e.embeddings[0]), "legacy /api/embeddings")
f = oa.embeddings.create(model=MODEL, input=texts, encoding_format="float")
check([d.index for d in f.data] == [0, 1] and f.usage.prompt_tokens > 0, f.usage)
check(all(close(d.embedding, v) for d, v in zip(f.data, e.embeddings)), "openai float")
# Without encoding_format the client asks for base64 and decodes it itself.
raw = oa.embeddings.with_raw_response.create(model=MODEL, input=texts)
check(json.loads(raw.http_request.content)["encoding_format"] == "base64", "client asks base64")
check(isinstance(raw.http_response.json()["data"][0]["embedding"], str), "answered in base64")
b = raw.parse()
check(all(close(d.embedding, v) for d, v in zip(b.data, e.embeddings)), "openai base64")

# ---- log-probabilities ----
r = oa.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=6,
                               logprobs=True, top_logprobs=3)
lps = r.choices[0].logprobs.content
check(len(lps) == r.usage.completion_tokens, f"{len(lps)} entries, {r.usage}")
for lp in lps:
    tops = [t.logprob for t in lp.top_logprobs]
    check(lp.logprob <= 0 and len(tops) == 3 and tops == sorted(tops, reverse=True), lp)
    check(lp.logprob <= tops[0] + 1e-5, "no alternative is less likely than the pick")
chunks = list(oa.chat.completions.create(model=MODEL, messages=msgs, temperature=0,
                                         max_tokens=6, logprobs=True, stream=True))
streamed = [lp for c in chunks if c.choices and c.choices[0].logprobs
            for lp in c.choices[0].logprobs.content]
check([x.logprob for x in streamed] == [x.logprob for x in lps], "streamed logprobs == whole")
c = oa.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=4,
                          logprobs=2)
clp = c.choices[0].logprobs
check(len(clp.tokens) == len(clp.token_logprobs) == c.usage.completion_tokens, clp)
check(all(len(t) >= 1 for t in clp.top_logprobs), "completions top_logprobs")
g = ol.generate(model=MODEL, prompt="Once upon a time", options={**GREEDY, "num_predict": 4},
                logprobs=True, top_logprobs=2)
check(len(g.logprobs) == g.eval_count and all(len(x.top_logprobs) == 2 for x in g.logprobs),
      g.logprobs)

print(f"ok: {checks} checks")
