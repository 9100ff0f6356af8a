"""Structured output through the official `openai` Python SDK, unchanged: the schema that
`client.chat.completions.parse(response_format=Character)` sends for Pydantic models ($defs and
$ref for nested models, a list of models, anyOf for an Optional, an enum, additionalProperties
false and strict) is accepted, and the answer comes back parsed into the model.

Run by the integration test `json_schema::the_official_sdks_parse_gets_a_pydantic_instance`,
which starts the real api and a worker, with a fake OpenAI upstream answering valid JSON, and
passes:
  OPENAI_BASE_URL   the service's /v1 base URL
  OPENAI_API_KEY    a JWT of an ordinary user (sent as the bearer key, as the SDK does)
  MODEL             the model to ask
With `--print-schema`, prints the JSON Schema the SDK sends for `Character` and exits.
Prints `ok <check>` for each check that passed; exits non-zero at the first that fails.
"""

import enum
import json
import os
import sys
from typing import List, Optional

from openai import OpenAI
from openai.lib._parsing._completions import type_to_response_format_param
from pydantic import BaseModel


class Class(str, enum.Enum):
    bard = "bard"
    rogue = "rogue"
    wizard = "wizard"


class Stats(BaseModel):
    strength: int
    dexterity: int


class Item(BaseModel):
    name: str
    weight: float


class Character(BaseModel):
    name: str
    character_class: Class
    stats: Stats
    inventory: List[Item]
    nickname: Optional[str]


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


if "--print-schema" in sys.argv:
    print(json.dumps(type_to_response_format_param(Character)))
    sys.exit(0)

client = OpenAI(
    base_url=os.environ["OPENAI_BASE_URL"],
    api_key=os.environ["OPENAI_API_KEY"],
    max_retries=0,
)
completion = client.chat.completions.parse(
    model=os.environ["MODEL"],
    messages=[{"role": "user", "content": "Create a rogue for my campaign."}],
    response_format=Character,
)
message = completion.choices[0].message
parsed = message.parsed
check(
    "parse",
    isinstance(parsed, Character)
    and isinstance(parsed.stats, Stats)
    and all(isinstance(item, Item) for item in parsed.inventory)
    and len(parsed.inventory) == 2
    and parsed.character_class is Class.rogue
    and parsed.nickname is None
    and message.refusal is None,
    repr(completion),
)
