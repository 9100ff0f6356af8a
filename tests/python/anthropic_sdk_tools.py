"""Tool use through the official `anthropic` Python SDK, unchanged, against the running service.

Run by the integration test `tools::sdk::the_anthropic_sdk_does_a_tool_round_trip`, which starts the
real api and a worker whose Anthropic upstream is a fake speaking Anthropic's wire format, and
passes:
  ANTHROPIC_BASE_URL  the service's base URL
  ANTHROPIC_API_KEY   a JWT of an ordinary user
Prints `ok <check>` for each check that passed; exits non-zero at the first that fails.
"""

import os
import sys

from anthropic import Anthropic


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


client = Anthropic(base_url=os.environ["ANTHROPIC_BASE_URL"],
                   api_key=os.environ["ANTHROPIC_API_KEY"], max_retries=0)
TOOLS = [{
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]

message = client.messages.create(model="claude-sonnet", max_tokens=256, tools=TOOLS,
                                 tool_choice={"type": "auto"}, messages=MESSAGES)
uses = [b for b in message.content if b.type == "tool_use"]
check(
    "tool_use",
    message.stop_reason == "tool_use"
    and len(uses) == 1
    and uses[0].name == "get_weather"
    and uses[0].input == {"city": "Paris"},
    repr(message),
)

# Streamed (not from the cache): the SDK's helper assembles the same tool_use block.
with client.messages.stream(model="claude-sonnet", max_tokens=256, tools=TOOLS,
                            messages=MESSAGES,
                            extra_body={"cache": {"no_cache": True}}) as stream:
    final = stream.get_final_message()
streamed = [b for b in final.content if b.type == "tool_use"]
check(
    "stream",
    final.stop_reason == "tool_use"
    and [(b.id, b.name, b.input) for b in streamed] == [(b.id, b.name, b.input) for b in uses],
    repr(final),
)

# The client runs the tool and sends its result: the model answers in text.
answer = client.messages.create(
    model="claude-sonnet", max_tokens=256, tools=TOOLS,
    messages=MESSAGES + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                      "content": "sunny, 21 C"}]},
    ],
)
check(
    "round_trip",
    answer.stop_reason == "end_turn" and answer.content[0].text == "It is sunny in Paris.",
    repr(answer),
)
