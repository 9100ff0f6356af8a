"""The official `openai` Python SDK, unchanged, against the running service.

Run by the integration test `openai_compat::the_official_openai_python_sdk_works_unchanged`,
which starts the real api and a worker and passes:
  OPENAI_BASE_URL   the service's /v1 base URL
  OPENAI_API_KEY    a JWT of an ordinary user (sent as the bearer key, as the SDK does)
  LIMITED_API_KEY   a JWT of a user limited to 1 request per minute
Prints `ok <check>` for each check that passed; exits non-zero at the first that fails.
"""

import os
import sys

import openai
from openai import OpenAI

BASE_URL = os.environ["OPENAI_BASE_URL"]
MESSAGES = [
    {"role": "system", "content": "You are the narrator of a D&D campaign."},
    {"role": "user", "content": "Describe the tavern in one sentence."},
]


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


client = OpenAI(base_url=BASE_URL, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)

# A completion: a typed ChatCompletion, whose id is the durable request's id.
raw = client.chat.completions.with_raw_response.create(
    model="mock", messages=MESSAGES, max_tokens=16
)
completion = raw.parse()
text = completion.choices[0].message.content
check(
    "completion",
    completion.object == "chat.completion"
    and completion.id == raw.headers.get("x-request-id")
    and isinstance(text, str)
    and len(text.split()) == 16
    and completion.choices[0].finish_reason == "stop"
    and completion.usage.completion_tokens == 16,
    repr(completion),
)

# A streamed completion: chunks assembled by the SDK, usage at the end.
stream = client.chat.completions.create(
    model="mock",
    messages=MESSAGES + [{"role": "assistant", "content": text},
                         {"role": "user", "content": "And its keeper?"}],
    max_tokens=24,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage, ids = [], None, None, set()
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
check(
    "stream",
    len(pieces) > 1
    and len(streamed.split()) == 24
    and finish == "stop"
    and usage is not None
    and usage.completion_tokens == 24
    and len(ids) == 1,
    f"pieces={pieces!r} finish={finish!r} usage={usage!r} ids={ids!r}",
)

# A 429 from the service's rate limiter surfaces as the SDK's RateLimitError.
limited = OpenAI(base_url=BASE_URL, api_key=os.environ["LIMITED_API_KEY"], max_retries=0)
limited.chat.completions.create(model="mock", messages=MESSAGES, max_tokens=4)
try:
    limited.chat.completions.create(model="mock", messages=MESSAGES, max_tokens=4)
    check("rate_limit", False, "the second call of the minute was not refused")
except openai.RateLimitError as err:
    check(
        "rate_limit",
        err.status_code == 429
        and err.code == "rate_limit_exceeded"
        and int(err.response.headers["retry-after"]) >= 1,
        repr(err),
    )

# An invalid request surfaces as the SDK's BadRequestError, naming the parameter.
try:
    client.chat.completions.create(model="mock", messages=MESSAGES, temperature=7)
    check("bad_request", False, "temperature 7 was accepted")
except openai.BadRequestError as err:
    check(
        "bad_request",
        err.status_code == 400 and err.param == "temperature" and "temperature" in err.message,
        repr(err),
    )
