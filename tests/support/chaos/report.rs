//! What a scenario reports: the [`Tally`] of one run (the counts, notes and problems that
//! decide whether it passed) and the table the suite prints of all of them.

use std::collections::BTreeMap;

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub scenario: &'static str,
    /// Requests answered `202` (or, for streams, that started).
    pub accepted: usize,
    pub completed: usize,
    /// Failed or cancelled: a final state, reported as such to the client.
    pub failed: usize,
    /// Accepted, but without a row, or not final within the scenario's bound.
    pub lost: usize,
    /// Requests with more than one succeeded provider call recorded, more than one
    /// `generation.completed` event, or usage counted more than once.
    pub completed_twice: usize,
    /// Successful answers the scenario's fake providers gave for the requests they served,
    /// and how many of those requests completed (`None` where only the built-in mock runs).
    pub provider_calls: Option<(usize, usize)>,
    /// Requests the provider answered more than once that no kill of their worker (between
    /// the answer and the commit) explains.
    pub paid_twice: usize,
    /// What the scenario did and saw (kills, status counts, streams' ends, …).
    pub notes: Vec<String>,
    /// Broken expectations besides lost / completed twice (a 500 during an outage, a stream
    /// that hung, a truncated success, a process that died, …).
    pub problems: Vec<String>,
}

impl Tally {
    /// Lost = 0, completed twice = 0, paid twice = 0, and nothing else broken.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.completed_twice == 0
            && self.paid_twice == 0
            && self.problems.is_empty()
    }

    /// Provider calls per completed request, or `-` without a counting provider.
    fn calls_per_completed(&self) -> String {
        match self.provider_calls {
            Some((calls, completed)) if completed > 0 => {
                format!("{:.3}", calls as f64 / completed as f64)
            }
            _ => "-".into(),
        }
    }

    pub(crate) fn problem(&mut self, what: impl Into<String>) {
        self.problems.push(what.into());
    }

    pub(crate) fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }
}

/// The tallies as one table, each scenario followed by its notes and problems.
pub fn render_table(tallies: &[Tally]) -> String {
    let mut out = format!(
        "{:<18} {:>9} {:>10} {:>7} {:>5} {:>16} {:>16} {:>11}  {}\n",
        "scenario",
        "accepted",
        "completed",
        "failed",
        "lost",
        "completed twice",
        "calls/completed",
        "paid twice",
        "result"
    );
    for t in tallies {
        out.push_str(&format!(
            "{:<18} {:>9} {:>10} {:>7} {:>5} {:>16} {:>16} {:>11}  {}\n",
            t.scenario,
            t.accepted,
            t.completed,
            t.failed,
            t.lost,
            t.completed_twice,
            t.calls_per_completed(),
            t.paid_twice,
            if t.passed() { "ok" } else { "FAILED" }
        ));
        for note in &t.notes {
            out.push_str(&format!("    {note}\n"));
        }
        for problem in &t.problems {
            out.push_str(&format!("    PROBLEM: {problem}\n"));
        }
    }
    out
}

pub(crate) fn describe(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
