"""The official `openai` Python SDK's Responses API, unchanged, against the running service.

Run by the integration test
`openai_responses::the_official_openai_sdk_uses_the_responses_api_unchanged`, which starts the
real api and a worker and passes:
  OPENAI_BASE_URL   the service's /v1 base URL
  OPENAI_API_KEY    a JWT of an ordinary user (sent as the bearer key, as the SDK does)
Prints `ok <check>` for each check that passed; exits non-zero at the first that fails.
"""

import json
import os
import sys
import time

from openai import OpenAI

client = OpenAI(
    base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"], max_retries=0
)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


# A plain response: a typed Response whose output_text the SDK assembles.
response = client.responses.create(
    model="mock",
    instructions="You are the narrator of a D&D campaign.",
    input="Describe the tavern in one sentence.",
    max_output_tokens=16,
    metadata={"scene": "tavern"},
)
check(
    "create",
    response.object == "response"
    and response.status == "completed"
    and response.id.startswith("resp_")
    and len(response.output_text.split()) == 16
    and response.usage.output_tokens == 16
    and response.metadata == {"scene": "tavern"}
    and response.instructions == "You are the narrator of a D&D campaign.",
    repr(response),
)

# Background: answered at once, then retrieved until it completes.
queued = client.responses.create(
    model="mock", input="A slow tale", background=True, extra_body={"mock": {"latency_ms": 300}}
)
statuses = [queued.status]
current = queued
for _ in range(200):
    if current.status == "completed":
        break
    time.sleep(0.05)
    current = client.responses.retrieve(queued.id)
    statuses.append(current.status)
check(
    "background",
    queued.status == "queued"
    and queued.background is True
    and current.status == "completed"
    and current.id == queued.id
    and len(current.output_text) > 0,
    f"statuses={statuses!r} last={current!r}",
)

# A streamed response: typed events, in order, numbered.
events = list(
    client.responses.create(model="mock", input="Stream a tale", stream=True, max_output_tokens=12)
)
types = [e.type for e in events]
numbers = [e.sequence_number for e in events]
streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
check(
    "stream",
    types[:4]
    == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    and types[-1] == "response.completed"
    and numbers == sorted(set(numbers))
    and streamed == events[-1].response.output_text
    and len(streamed.split()) == 12,
    f"types={types!r} numbers={numbers!r}",
)

# A background stream, left after a few events and resumed from the last number seen: exactly
# the remaining events, the same as a full replay's.
stream = client.responses.create(
    model="mock",
    input="A long tale",
    stream=True,
    background=True,
    max_output_tokens=20,
    extra_body={"mock": {"token_delay_ms": 30}},
)
first = []
for event in stream:
    first.append(event)
    if len(first) == 7:
        break
stream.close()
rid = first[0].response.id
resumed = list(
    client.responses.retrieve(rid, stream=True, starting_after=first[-1].sequence_number)
)
full = list(client.responses.retrieve(rid, stream=True))


def key(e):
    return (e.type, e.sequence_number, getattr(e, "delta", None))


check(
    "resume",
    [key(e) for e in first + resumed] == [key(e) for e in full]
    and resumed[-1].type == "response.completed"
    and "".join(e.delta for e in full if e.type == "response.output_text.delta")
    == resumed[-1].response.output_text,
    f"first={[key(e) for e in first]!r} resumed={[key(e) for e in resumed]!r}",
)

# Cancelling a slow background response.
slow = client.responses.create(
    model="mock", input="Never mind", background=True, extra_body={"mock": {"latency_ms": 20000}}
)
cancelled = client.responses.cancel(slow.id)
check(
    "cancel",
    cancelled.status == "cancelled"
    and cancelled.id == slow.id
    and client.responses.retrieve(slow.id).status == "cancelled",
    repr(cancelled),
)

# Structured output: text.format json_schema.
schema = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "level": {"type": "integer"}},
    "required": ["name", "level"],
    "additionalProperties": False,
}
hero = client.responses.create(
    model="mock",
    input="A hero",
    text={"format": {"type": "json_schema", "name": "hero", "schema": schema, "strict": True}},
)
parsed = json.loads(hero.output_text)
check(
    "json_schema",
    isinstance(parsed.get("name"), str)
    and isinstance(parsed.get("level"), int)
    and hero.text.format.type == "json_schema"
    and hero.text.format.name == "hero",
    repr(hero),
)
