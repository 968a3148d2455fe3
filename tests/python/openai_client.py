"""The official `openai` client, unchanged, against the hybrid router's gateway.

Reads GATEWAY_URL and GATEWAY_KEY; prints one JSON object with what it saw (the Rust test
`e2e_openai_client` asserts on it). Any client-side failure raises and exits non-zero.
"""
import json
import os

import openai

URL = os.environ["GATEWAY_URL"] + "/v1"
KEY = os.environ["GATEWAY_KEY"]
PROMPT = "How do I reset my password? I am locked out of my account."

client = openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0, timeout=120)
messages = [{"role": "user", "content": PROMPT}]

models = [m.id for m in client.models.list()]

raw = client.chat.completions.with_raw_response.create(
    model="hybrid", messages=messages, max_tokens=16, temperature=0
)
completion = raw.parse()
text = completion.choices[0].message.content
routing = (completion.model_extra or {}).get("routing")

stream = client.chat.completions.create(
    model="hybrid",
    messages=messages,
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, stream_routing, stream_usage, finish = [], None, None, None
for chunk in stream:
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
    extra = chunk.model_extra or {}
    if extra.get("routing"):
        stream_routing = extra["routing"]
    if chunk.usage is not None:
        stream_usage = chunk.usage.completion_tokens

try:
    openai.OpenAI(base_url=URL, api_key="sk-wrong", max_retries=0).models.list()
    auth_status = 200
except openai.AuthenticationError as e:
    auth_status = e.status_code

print(
    json.dumps(
        {
            "openai_version": openai.__version__,
            "models": models,
            "text": text,
            "finish_reason": completion.choices[0].finish_reason,
            "usage": completion.usage.completion_tokens,
            "routing": routing,
            "route_header": raw.headers.get("x-route-decision"),
            "request_id": raw.headers.get("x-request-id"),
            "stream_text": "".join(pieces),
            "stream_routing": stream_routing,
            "stream_usage": stream_usage,
            "stream_finish_reason": finish,
            "auth_status": auth_status,
        }
    )
)
