"""The official `openai` Python SDK's Batch API, unchanged, against the running service.

Run by the integration test `openai_batches::the_official_openai_python_sdk_runs_a_batch_unchanged`,
which starts the real api and a worker and passes:
  OPENAI_BASE_URL   the service's /v1 base URL
  OPENAI_API_KEY    a JWT of an ordinary user (sent as the bearer key, as the SDK does)
  EXPIRED_BATCH     (second run) a batch the test has moved past its completion window
Prints `ok <check>` for each check that passed; exits non-zero at the first that fails. The
first run ends by making a batch whose one line is still running and prints `expiring <id>`;
the test moves it past its window, expires it, and runs the script again with EXPIRED_BATCH.
"""

import io
import json
import os
import sys
import time

import openai
from openai import OpenAI


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok {name}", flush=True)


def jsonl(lines):
    return io.BytesIO(("\n".join(json.dumps(line) for line in lines) + "\n").encode())


def line(custom_id, content, **extra):
    body = {"model": "mock", "max_tokens": 8, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"], max_retries=0)

expired_id = os.environ.get("EXPIRED_BATCH")
if expired_id:
    expired = client.batches.retrieve(expired_id)
    check(
        "expired",
        expired.status == "expired" and expired.expired_at is not None and expired.request_counts.failed == 1,
        expired,
    )
    errors = [json.loads(l) for l in client.files.content(expired.error_file_id).text.splitlines()]
    check("expired_errors", [e["error"]["code"] for e in errors] == ["batch_expired"], errors)
    try:
        client.batches.cancel(expired_id)
        check("expired_cancel", False, "an expired batch was cancelled")
    except openai.ConflictError:
        check("expired_cancel", True)
    sys.exit(0)

lines = [line(f"quest-{i}", f"Name quest {i}.") for i in range(4)]
lines.append(line("doomed", "This one fails.", mock={"fail": "permanent"}))
uploaded = client.files.create(file=("quests.jsonl", jsonl(lines)), purpose="batch")
check("upload", uploaded.id.startswith("file-") and uploaded.purpose == "batch", uploaded)

batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"campaign": "west marches"},
)
check("create", batch.status == "in_progress" and batch.request_counts.total == 5, batch)

deadline = time.time() + 60
while batch.status not in ("completed", "failed", "cancelled", "expired"):
    check_time = time.time() < deadline
    if not check_time:
        check("completed", False, batch)
    time.sleep(0.2)
    batch = client.batches.retrieve(batch.id)
counts = batch.request_counts
check("completed", batch.status == "completed" and (counts.completed, counts.failed) == (4, 1), batch)

output = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
ids = sorted(l["custom_id"] for l in output)
bodies_ok = all(
    l["response"]["status_code"] == 200
    and openai.types.chat.ChatCompletion.model_validate(l["response"]["body"]).choices[0].message.content
    for l in output
)
check("output", ids == [f"quest-{i}" for i in range(4)] and bodies_ok, output)

errors = [json.loads(l) for l in client.files.content(batch.error_file_id).text.splitlines()]
check(
    "errors",
    [e["custom_id"] for e in errors] == ["doomed"] and errors[0]["response"]["status_code"] >= 400,
    errors,
)

listed = [b.id for b in client.batches.list(limit=10)]
files = [f.id for f in client.files.list()]
check("list", batch.id in listed and uploaded.id in files, (listed, files))

waiting = client.files.create(file=("wait.jsonl", jsonl([line("slow", "wait", mock={"latency_ms": 30000})])), purpose="batch")
pending = client.batches.create(input_file_id=waiting.id, endpoint="/v1/chat/completions", completion_window="24h")
cancelled = client.batches.cancel(pending.id)
while cancelled.status == "cancelling":
    time.sleep(0.2)
    cancelled = client.batches.retrieve(pending.id)
check("cancel", cancelled.status == "cancelled" and cancelled.request_counts.failed == 1, cancelled)

try:
    client.batches.retrieve("batch_" + "0" * 32)
    check("not_found", False, "an unknown batch was found")
except openai.NotFoundError:
    check("not_found", True)

late_file = client.files.create(
    file=("late.jsonl", jsonl([line("late", "too late", mock={"latency_ms": 30000})])), purpose="batch"
)
late = client.batches.create(input_file_id=late_file.id, endpoint="/v1/chat/completions", completion_window="24h")
check("expires_at", late.expires_at == late.created_at + 24 * 3600, late)
print(f"expiring {late.id}", flush=True)
