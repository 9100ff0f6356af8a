//! Browser clients: CORS for configured origins, stream tokens for `EventSource`, and the demo
//! page (served from the binary, then driven in headless Chromium).

mod cors;
mod demo;
mod stream_tokens;
