// Drives the demo page (/demo) in headless Chromium: loads the templates, then over each
// transport (EventSource, WebSocket) submits a prompt on the mock provider, waits for streamed
// text, reconnects mid-stream (a new stream token, resuming after the last event id), waits for
// `done`, and asserts that the page shows exactly the stored result; no console error, failed
// request or CSP violation on the way.
//
// Environment: BASE_URL (the api), TOKEN (a user's JWT), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOT (a PNG path; none unless set). Prints one JSON line of what it measured.
import { chromium } from "playwright-core";

const base = process.env.BASE_URL;
const token = process.env.TOKEN;
if (!base || !token) {
  console.error("BASE_URL and TOKEN are required");
  process.exit(2);
}

function check(condition, message) {
  if (!condition) throw new Error("check failed: " + message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Chromium's sandbox needs user namespaces, which root and containers often lack.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 820 } });
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push("console: " + msg.text());
  });
  page.on("response", (answer) => {
    if (answer.status() >= 400) problems.push(`${answer.status()} for ${answer.url()}`);
  });
  page.on("pageerror", (err) => problems.push("page error: " + err.message));
  page.on("requestfailed", (request) => {
    // A stream closed by the page on purpose (Reconnect, done) is no failure.
    if (!request.url().includes("/stream?") && !request.url().includes("/ws")) {
      problems.push("request failed: " + request.url().replace(/access_token=[^&]*/, "access_token=…"));
    }
  });

  const started = Date.now();
  const response = await page.goto(`${base}/demo#token=${encodeURIComponent(token)}`);
  check(response.status() === 200, `GET /demo answered ${response.status()}`);
  const csp = response.headers()["content-security-policy"] || "";
  check(csp.includes("default-src 'none'") && csp.includes("connect-src 'self'"), "CSP: " + csp);
  check((await page.inputValue("#token")) === token, "the token from the fragment is filled in");
  check(!page.url().includes("#"), "the fragment with the token is taken out of the address");

  // Templates: listed with the token.
  await page.click("#load-templates");
  await page.waitForFunction(() => document.querySelectorAll("#template option").length > 0);
  const templates = await page.locator("#template option").count();
  await page.check("#mode-prompt");

  // A slow mock (50 ms a token), so that the stream can be interrupted.
  await page.click("summary");
  await page.fill(
    "#extra",
    JSON.stringify({ model: "mock", parameters: { max_tokens: 40 }, mock: { token_delay_ms: 50 } }),
  );
  // One generation over each transport: a reconnection mid-stream, then `done`, and the page
  // showing exactly the stored result.
  async function generate(transport) {
    await page.check(transport === "ws" ? "#transport-ws" : "#transport-sse");
    // A prompt of its own: the same one again would be answered from the cache at once.
    await page.fill("#prompt", `Name a tiefling warlock and her patron (${transport}).`);
    const before = Number(await page.textContent("#connections"));
    const submitted = Date.now();
    await page.click("#submit");
    await page.waitForFunction(() => document.getElementById("output").textContent.length > 0, null, {
      timeout: 20_000,
    });
    const firstText = Date.now();
    const partial = await page.textContent("#output");
    check(!(await page.textContent("#status")).startsWith("done"), `${transport}: still streaming when interrupted`);

    // Reconnect: the page closes its stream and opens another after the last event id.
    await page.click("#reconnect");
    await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("done"), null, {
      timeout: 30_000,
    });
    const done = Date.now();
    const shown = await page.textContent("#output");
    const requestId = await page.textContent("#request-id");
    const connections = Number(await page.textContent("#connections")) - before;
    check(connections >= 2, `${transport}: two connections at least, got ${connections}`);
    check(shown.startsWith(partial), `${transport}: the text before the reconnection is kept`);

    const poll = await fetch(`${base}/api/v1/generate/${requestId}`, {
      headers: { Authorization: "Bearer " + token },
    });
    const row = await poll.json();
    check(row.status === "completed", `${transport}: the request completed: ` + JSON.stringify(row));
    check(shown === row.result, `${transport}: the page shows the stored result:\n page: ${shown}\n  row: ${row.result}`);
    return {
      connections,
      chars: shown.length,
      first_text_ms: firstText - submitted,
      done_ms: done - submitted,
    };
  }

  const pageLoad = Date.now() - started;
  const sse = await generate("sse");
  if (process.env.SCREENSHOT) {
    await page.screenshot({ path: process.env.SCREENSHOT });
  }
  const ws = await generate("ws");
  check(problems.length === 0, problems.join("\n"));

  console.log(JSON.stringify({ ok: true, templates, page_load_ms: pageLoad, sse, ws }));
} finally {
  await browser.close();
}
