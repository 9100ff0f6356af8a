//! The demo page: built into the binary with a strict Content-Security-Policy, and driven in
//! headless Chromium over EventSource and WebSocket (`tests/browser/demo-check.mjs`, as `scripts/browser-check.sh` does)
//! against the real binaries with the mock provider.

use std::path::{Path, PathBuf};
use std::time::Duration;

use llm_tests::{repo_root, spawn_api_process, spawn_app, spawn_worker_process};
use serde_json::Value;
use uuid::Uuid;

#[tokio::test]
async fn the_demo_page_is_built_in_and_may_load_nothing_from_elsewhere() {
    let app = spawn_app().await;
    for (path, content_type, needle) in [
        ("/demo", "text/html", "/demo/demo.js"),
        ("/demo/demo.js", "text/javascript", "new EventSource(url)"),
        ("/demo/demo.js", "text/javascript", "new WebSocket("),
        ("/demo/demo.css", "text/css", "#output"),
        ("/demo/icon.svg", "image/svg+xml", "<svg"),
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {headers:?}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "no inline script or style: {csp}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path}");
        if path != "/demo/icon.svg" {
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{path} names no other server"
            );
        }
    }
    let html = app.http.get(app.url("/demo")).send().await.unwrap();
    let html = html.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "nothing inline"
    );
}

/// `tests/browser/node_modules` with playwright-core at the version of its package-lock.json,
/// installed (`npm ci`) on first use and kept.
fn playwright() -> PathBuf {
    let dir = repo_root().join("tests/browser");
    let lock = std::fs::read(dir.join("package-lock.json")).unwrap();
    let stamp = dir.join("node_modules/.installed-lock.json");
    if std::fs::read(&stamp).ok().as_deref() != Some(lock.as_slice()) {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .expect("npm (node) is needed: apt-get install nodejs npm");
        assert!(
            out.status.success(),
            "npm ci failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, &lock).unwrap();
    }
    dir
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        Path::new(&path).exists(),
        "{} is missing: scripts/browser-deps.sh installs it (apt-get install chromium)",
        path.display()
    );
    path
}

#[tokio::test]
async fn the_demo_page_streams_a_generation_in_headless_chromium() {
    let browser = chromium();
    let driver = playwright();
    let app = spawn_app().await; // its database; the api and the worker are processes
    let _worker = spawn_worker_process(&app.db, &[]);
    let (_api, base) = spawn_api_process(&app.db).await;
    let token = app.token_for(Uuid::now_v7());
    let run = tokio::process::Command::new("node")
        .arg("demo-check.mjs")
        .current_dir(&driver)
        .env("BASE_URL", &base)
        .env("TOKEN", &token)
        .env("CHROMIUM", &browser)
        .env_remove("SCREENSHOT")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser check finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    for transport in ["sse", "ws"] {
        let run = &report[transport];
        assert!(run["connections"].as_u64().unwrap() >= 2, "{report}");
        assert!(run["chars"].as_u64().unwrap() > 0, "{report}");
    }
}
