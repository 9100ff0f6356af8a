"""Tool calling through the official `openai` Python SDK, unchanged, against the running service.

Run by the integration test `tools::sdk::the_openai_sdk_does_a_tool_round_trip`, which starts the
real api and a worker whose OpenAI upstream is a fake speaking OpenAI's wire format, and passes:
  OPENAI_BASE_URL   the service's /v1 base URL
  OPENAI_API_KEY    a JWT of an ordinary user
Prints `ok <check>` for each check that passed; exits non-zero at the first that fails.
"""

import json
import os
import sys

from openai import OpenAI


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"],
                max_retries=0)
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]

# The model calls the tool: tool_calls, finish_reason tool_calls, no content.
first = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS,
                                       tool_choice="auto", parallel_tool_calls=True)
choice = first.choices[0]
calls = choice.message.tool_calls or []
check(
    "tool_calls",
    choice.finish_reason == "tool_calls"
    and choice.message.content is None
    and len(calls) == 1
    and calls[0].type == "function"
    and calls[0].function.name == "get_weather"
    and json.loads(calls[0].function.arguments) == {"city": "Paris"},
    repr(first),
)

# The same call streamed (not from the cache): the SDK's pieces make the same calls.
stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=TOOLS,
                                        tool_choice="auto", stream=True,
                                        extra_body={"cache": {"no_cache": True}})
assembled, finish, pieces = {}, None, 0
for chunk in stream:
    for c in chunk.choices:
        for piece in c.delta.tool_calls or []:
            pieces += 1
            call = assembled.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            if piece.id:
                call["id"] = piece.id
            if piece.function and piece.function.name:
                call["name"] += piece.function.name
            if piece.function and piece.function.arguments:
                call["arguments"] += piece.function.arguments
        if c.finish_reason:
            finish = c.finish_reason
as_json = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
           for c in calls]
check(
    "stream",
    pieces > 1 and finish == "tool_calls" and [assembled[i] for i in sorted(assembled)] == as_json,
    f"pieces={pieces} finish={finish!r} assembled={assembled!r} json={as_json!r}",
)

# The SDK's own stream helper assembles the same calls.
with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES, tools=TOOLS,
                                    extra_body={"cache": {"no_cache": True}}) as helper:
    final = helper.get_final_completion()
helper_calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in final.choices[0].message.tool_calls or []]
check("stream_helper", helper_calls == as_json, repr(final))

# The client runs the tool and sends the result back: the model answers in text.
follow_up = MESSAGES + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21 C"},
]
final = client.chat.completions.create(model="gpt-4o", messages=follow_up, tools=TOOLS)
check(
    "round_trip",
    final.choices[0].finish_reason == "stop"
    and final.choices[0].message.content == "It is sunny in Paris."
    and not final.choices[0].message.tool_calls,
    repr(final),
)
