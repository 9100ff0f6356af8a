//! The fast part of the chaos suite (`scripts/chaos.sh` runs the full one): every scenario of
//! `llm_tests::chaos` at small sizes, against the real binaries. Each must lose nothing,
//! complete nothing twice, and meet its own expectations (the table says which failed).

use llm_tests::chaos::{self, Sizes, Tally};

fn assert_passed(t: &Tally) {
    let table = chaos::render_table(std::slice::from_ref(t));
    eprintln!("{table}");
    assert!(t.accepted > 0, "nothing was accepted\n{table}");
    assert!(t.passed(), "{table}");
}

#[tokio::test]
async fn chaos_workers_sigkilled_during_jobs_lose_nothing() {
    assert_passed(&chaos::worker_kills(&Sizes::quick()).await);
}

#[tokio::test]
async fn chaos_api_sigkilled_during_submits_every_202_completes() {
    assert_passed(&chaos::api_kills(&Sizes::quick()).await);
}

#[tokio::test]
async fn chaos_postgres_restart_is_survived_without_restarting_processes() {
    assert_passed(&chaos::postgres_restart(&Sizes::quick()).await);
}

#[tokio::test]
async fn chaos_redis_restart_leaves_submits_alone_and_ends_every_stream() {
    assert_passed(&chaos::redis_restart(&Sizes::quick()).await);
}

#[tokio::test]
async fn chaos_provider_faults_never_end_as_a_truncated_success() {
    assert_passed(&chaos::provider_faults(&Sizes::quick()).await);
}
