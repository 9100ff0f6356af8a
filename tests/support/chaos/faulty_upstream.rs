//! The misbehaving fake providers of the provider-faults scenario: the whole answer they give
//! on success, the cycle of faults they go through in each provider's wire format, and the
//! model registry with a short circuit cool-down the scenario's processes load.

use std::time::Duration;

use crate::TestDb;
use crate::fake_upstream::{self, Received, Reply};

/// The answer every fake provider gives when it succeeds, in pieces when streaming.
pub(crate) const FULL_PIECES: [&str; 7] = [
    "The",
    " ancient",
    " dragon",
    " sleeps",
    " beneath",
    " the",
    " mountain.",
];

pub(crate) fn full_text() -> String {
    FULL_PIECES.concat()
}

/// The faults a fake provider cycles through: half successes, the rest a 429 storm with
/// `Retry-After`, 5xx, a timeout, garbage bodies, cut streams and streams that end early.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    Success,
    TooMany,
    ServerError,
    Unavailable,
    Timeout,
    Garbage,
    Cut,
    EndsEarly,
    Empty,
}

pub(crate) const FAULT_CYCLE: [Fault; 18] = [
    Fault::Success,
    Fault::TooMany,
    Fault::TooMany,
    Fault::TooMany,
    Fault::Success,
    Fault::ServerError,
    Fault::Success,
    Fault::Timeout,
    Fault::Success,
    Fault::Garbage,
    Fault::Success,
    Fault::Cut,
    Fault::Success,
    Fault::EndsEarly,
    Fault::Success,
    Fault::Empty,
    Fault::Success,
    Fault::Unavailable,
];

/// Reply constructors of one provider's wire format.
pub(crate) struct Wire {
    success: fn(&str, u32, u32) -> Reply,
    stream: fn(&[&str], u32, u32, bool) -> Reply,
    error: fn(u16, &str, Option<&str>) -> Reply,
}

pub(crate) const OPENAI: Wire = Wire {
    success: fake_upstream::openai::success,
    stream: fake_upstream::openai::stream,
    error: fake_upstream::openai::error,
};
pub(crate) const ANTHROPIC: Wire = Wire {
    success: fake_upstream::anthropic::success,
    stream: fake_upstream::anthropic::stream,
    error: fake_upstream::anthropic::error,
};
pub(crate) const OLLAMA: Wire = Wire {
    success: fake_upstream::ollama::success,
    stream: fake_upstream::ollama::stream,
    error: fake_upstream::ollama::error,
};

/// A provider call's timeout in the faults scenario; `Fault::Timeout` answers after it.
pub(crate) const FAULTS_CALL_TIMEOUT_SECS: u64 = 2;

pub(crate) fn faulty_reply(wire: &Wire, request: &Received, n: usize) -> Reply {
    let streaming = request.body["stream"].as_bool().unwrap_or(false);
    let content_type = if streaming {
        "text/event-stream"
    } else {
        "application/json"
    };
    let success = || {
        if streaming {
            (wire.stream)(&FULL_PIECES, 12, 7, true)
        } else {
            (wire.success)(&full_text(), 12, 7)
        }
    };
    match FAULT_CYCLE[n % FAULT_CYCLE.len()] {
        Fault::Success => success(),
        Fault::TooMany => (wire.error)(429, "slow down", Some("1")),
        Fault::ServerError => (wire.error)(500, "internal error", None),
        Fault::Unavailable => (wire.error)(503, "overloaded", None),
        Fault::Timeout => Reply::Delayed(
            Duration::from_secs(FAULTS_CALL_TIMEOUT_SECS + 1),
            Box::new(success()),
        ),
        Fault::Garbage => Reply::Raw {
            status: 200,
            content_type,
            body: "<html><body>502 Bad Gateway</body></html>".into(),
        },
        // Some of the answer, then the connection drops.
        Fault::Cut => (wire.stream)(&FULL_PIECES[..3], 12, 3, false),
        // Some of the answer and a clean end of the body, but no end-of-message marker.
        Fault::EndsEarly => match (wire.stream)(&FULL_PIECES[..3], 12, 3, false) {
            Reply::Stream {
                content_type,
                pieces,
                gap,
                ..
            } if streaming => Reply::Stream {
                content_type,
                pieces,
                gap,
                cut: false,
            },
            _ => Reply::Raw {
                status: 200,
                content_type,
                body: r#"{"id": "cut-short", "choices": [{"index": 0, "mess"#.into(),
            },
        },
        Fault::Empty => (wire.success)("", 12, 0),
    }
}

/// Circuit cool-down of the faults scenario: circuits open, probe and close within its run.
pub(crate) const FAULTS_CIRCUIT_COOLDOWN_SECS: u64 = 2;

/// The repository's model registry with the circuit cool-down shortened to `secs`, written to
/// the temporary directory under the test database's name (for `MODELS_FILE`).
pub fn short_cooldown_registry(db: &TestDb, secs: u64) -> std::path::PathBuf {
    let registry = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/models.toml");
    let text = std::fs::read_to_string(registry).unwrap();
    let shortened = text.replacen("cooldown_secs = 30", &format!("cooldown_secs = {secs}"), 1);
    assert_ne!(
        text, shortened,
        "config/models.toml changed its circuit cool-down line"
    );
    let path = std::env::temp_dir().join(format!("{}-models.toml", db.name));
    std::fs::write(&path, shortened).unwrap();
    path
}
