//! The LLM-shaped phase's table, each figure beside its target.

use crate::phases::llm::LlmResult;

impl LlmResult {
    pub fn print(&self) {
        let i = &self.in_flight_memory;
        let s = &self.open_streams;
        let w = &self.interactive_queue_wait;
        println!(
            "\nLLM-shaped (fake OpenAI: first token 300-800 ms, 30-80 tokens/s, 200-800 tokens, {} requests/min; \
             a {}-item batch and {} interactive users on 1 worker; drained in {:.0} s)",
            self.limit_rpm, self.batch_items, self.interactive_users, self.drain_secs
        );
        println!("{:<44} {:>32}   target", "measure", "result");
        let line = |name: &str, value: String, target: &str| {
            println!("{name:<44} {value:>32}   {target}");
        };
        line(
            "throughput against the limit, backlog waiting",
            format!(
                "{:.0}/min = {:.1}%",
                self.throughput_rpm, self.throughput_pct_of_limit
            ),
            ">= 95%",
        );
        line(
            "  over the whole phase (ramp and tail)",
            format!(
                "{:.0}/min = {:.1}%",
                self.overall_rpm,
                self.overall_rpm * 100.0 / self.limit_rpm.max(1) as f64
            ),
            "",
        );
        line(
            "upstream 429s (calls answered)",
            format!("{} ({})", self.upstream_429, self.upstream_answered),
            "0",
        );
        line(
            "batch completed / failed / unfinished",
            format!(
                "{} / {} / {}",
                self.batch_completed, self.batch_failed, self.batch_unfinished
            ),
            "",
        );
        if !self.failures.is_empty() {
            let why: Vec<String> = self
                .failures
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            line("  failed requests by error", why.join(", "), "");
        }
        line(
            "interactive queue wait p50 / p99",
            format!("{:.1} / {:.1} ms", w.p50_ms, w.p99_ms),
            "p99 <= 100 ms",
        );
        line(
            "  interactive requests (streamed)",
            format!(
                "{} ({})",
                self.interactive_requests, self.interactive_streamed
            ),
            "",
        );
        line(
            "calls in flight on the worker: peak / mean",
            format!("{} / {:.0}", self.in_flight_peak, self.in_flight_mean),
            "",
        );
        line(
            "  worker RSS idle -> peak",
            format!(
                "{:.1} -> {:.1} MB",
                self.worker_rss_idle_mb, self.worker_rss_peak_mb
            ),
            "",
        );
        line(
            "calls in flight on one worker: RSS",
            format!(
                "{} calls: {:.1} -> {:.1} MB",
                i.in_flight, i.worker_rss_idle_mb, i.worker_rss_in_flight_mb
            ),
            ">= 2,000 in <= 128 MB",
        );
        line(
            "  RSS per 1,000 calls in flight",
            format!("{:.1} MB", i.rss_per_1000_calls_mb),
            "",
        );
        line(
            "streams open on one api: RSS",
            format!(
                "{}: {:.1} -> {:.1} MB",
                s.streams, s.api_rss_idle_mb, s.api_rss_open_mb
            ),
            "10,000 in <= 300 MB",
        );
        line(
            "  api CPU per relayed token",
            format!(
                "{:.1} us ({} tokens, {:.1} s)",
                s.api_cpu_us_per_token, s.tokens_relayed, s.all_done_secs
            ),
            "",
        );
        line(
            "  streams not ended after 120 s",
            s.streams_unfinished.to_string(),
            "",
        );
    }
}
