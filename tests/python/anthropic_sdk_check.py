"""The official `anthropic` Python SDK, unchanged, against the running service.

Run by the integration test `anthropic::the_official_anthropic_python_sdk_works_unchanged`,
which starts the real api and a worker and passes:
  ANTHROPIC_BASE_URL  the service's base URL (the SDK appends /v1/messages)
  ANTHROPIC_API_KEY   a JWT of an ordinary user (sent as x-api-key, as the SDK does)
  LIMITED_API_KEY     a JWT of a user limited to 1 request per minute
Prints `ok <check>` for each check that passed; exits non-zero at the first that fails.
"""

import os
import sys

import anthropic
from anthropic import Anthropic

BASE_URL = os.environ["ANTHROPIC_BASE_URL"]
SYSTEM = "You are the narrator of a D&D campaign."
MESSAGES = [{"role": "user", "content": "Describe the tavern in one sentence."}]


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


client = Anthropic(base_url=BASE_URL, api_key=os.environ["ANTHROPIC_API_KEY"], max_retries=0)

# A message: a typed Message, whose id is the durable request's id after `msg_`.
raw = client.messages.with_raw_response.create(
    model="mock", system=SYSTEM, messages=MESSAGES, max_tokens=16
)
message = raw.parse()
text = message.content[0].text
check(
    "message",
    message.type == "message"
    and message.role == "assistant"
    and message.id == "msg_" + raw.headers.get("request-id")
    and message.content[0].type == "text"
    and len(text.split()) == 16
    and message.stop_reason == "end_turn"
    and message.usage.output_tokens == 16
    and message.usage.input_tokens > 0,
    repr(message),
)

# The SDK's streaming helper: text deltas assembled, then the final message.
conversation = MESSAGES + [
    {"role": "assistant", "content": text},
    {"role": "user", "content": [{"type": "text", "text": "And its keeper?"}]},
]
with client.messages.stream(
    model="mock", system=SYSTEM, messages=conversation, max_tokens=24
) as stream:
    pieces = list(stream.text_stream)
    final = stream.get_final_message()
streamed = "".join(pieces)
check(
    "stream_helper",
    len(pieces) > 1
    and len(streamed.split()) == 24
    and final.content[0].text == streamed
    and final.stop_reason == "end_turn"
    and final.usage.output_tokens == 24
    and final.usage.input_tokens > 0
    and final.id.startswith("msg_"),
    f"pieces={pieces!r} final={final!r}",
)

# `stream=True`: the raw event sequence, in Anthropic's order.
events = list(
    client.messages.create(
        model="mock",
        messages=[{"role": "user", "content": "A rumour, please."}],
        max_tokens=12,
        stream=True,
    )
)
kinds = [event.type for event in events]
deltas = "".join(e.delta.text for e in events if e.type == "content_block_delta")
check(
    "stream_events",
    kinds[:2] == ["message_start", "content_block_start"]
    and kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    and events[-2].delta.stop_reason == "end_turn"
    and events[-2].usage.output_tokens == 12
    and len(deltas.split()) == 12,
    f"kinds={kinds!r}",
)

# A 429 from the service's rate limiter surfaces as the SDK's RateLimitError.
limited = Anthropic(base_url=BASE_URL, api_key=os.environ["LIMITED_API_KEY"], max_retries=0)
limited.messages.create(model="mock", messages=MESSAGES, max_tokens=4)
try:
    limited.messages.create(model="mock", messages=MESSAGES, max_tokens=4)
    check("rate_limit", False, "the second call of the minute was not refused")
except anthropic.RateLimitError as err:
    check(
        "rate_limit",
        err.status_code == 429
        and err.body["error"]["type"] == "rate_limit_error"
        and int(err.response.headers["retry-after"]) >= 1,
        repr(err),
    )

# An invalid request surfaces as the SDK's BadRequestError, naming the parameter (the mock
# model writes at most 4,096 tokens; far larger values the SDK itself refuses unstreamed).
try:
    client.messages.create(model="mock", messages=MESSAGES, max_tokens=5000)
    check("bad_request", False, "max_tokens above the model's limit was accepted")
except anthropic.BadRequestError as err:
    check(
        "bad_request",
        err.status_code == 400
        and err.body["error"]["type"] == "invalid_request_error"
        and "max_tokens" in err.body["error"]["message"],
        repr(err),
    )

# The models: the registry's, listed and retrieved as Anthropic model objects.
models = [m.id for m in client.models.list()]
model = client.models.retrieve("mock")
check(
    "models",
    "mock" in models and model.type == "model" and model.id == "mock",
    f"models={models!r} model={model!r}",
)
