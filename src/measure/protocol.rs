//! The line protocol between the parent and a worker process.
//!
//! The worker gets its steps as a JSON array of strings in the environment variable
//! [`PLAN_ENV`] and reports on stdout, one line per event, each prefixed with [`PREFIX`]
//! so that what libraries print on the same stdout (NCCL_DEBUG lines, say) cannot be mistaken
//! for an event. Lines without the prefix are kept as the worker's log.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;

pub const PREFIX: &str = "@rigdoctor ";
pub const PLAN_ENV: &str = "RIGDOCTOR_WORKER_PLAN";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// The worker begins a step: the deadline for it starts now.
    Start { step: String },
    /// The step finished with a result.
    Done { step: String, result: Value },
    /// The step ran and failed without hanging (a CUDA error, say).
    Failed { step: String, error: String },
    /// Partial progress of the running step (a sub-test began or finished): if the step then
    /// hangs, the notes say how far it got.
    Note { step: String, note: Value },
    /// More steps, appended to the plan: a step can decide what follows (the pairs to test
    /// once the devices are known) without a second worker paying CUDA initialisation again.
    Plan { steps: Vec<String> },
}

/// Parse one stdout line: `Some(event)` for a protocol line, `None` for anything else.
pub fn parse_line(line: &str) -> Option<Event> {
    serde_json::from_str(line.strip_prefix(PREFIX)?).ok()
}

/// The steps a worker was asked to run, from [`PLAN_ENV`].
pub fn read_plan() -> Result<Vec<String>, String> {
    let raw = std::env::var(PLAN_ENV).map_err(|_| format!("{PLAN_ENV} is not set"))?;
    serde_json::from_str(&raw).map_err(|e| format!("{PLAN_ENV}: {e}"))
}

/// The worker's side: a writer for its events.
pub struct Worker<W: Write> {
    out: W,
}

impl<W: Write> Worker<W> {
    pub fn new(out: W) -> Self {
        Worker { out }
    }

    fn emit(&mut self, e: &Event) -> std::io::Result<()> {
        // Serialising these plain enums cannot fail.
        let json = serde_json::to_string(e).unwrap_or_default();
        writeln!(self.out, "{PREFIX}{json}")?;
        // Flush every event: the parent's deadline runs on what it has seen.
        self.out.flush()
    }

    pub fn start(&mut self, step: &str) -> std::io::Result<()> {
        self.emit(&Event::Start { step: step.into() })
    }

    pub fn done(&mut self, step: &str, result: Value) -> std::io::Result<()> {
        self.emit(&Event::Done {
            step: step.into(),
            result,
        })
    }

    pub fn note(&mut self, step: &str, note: Value) -> std::io::Result<()> {
        self.emit(&Event::Note {
            step: step.into(),
            note,
        })
    }

    pub fn plan(&mut self, steps: Vec<String>) -> std::io::Result<()> {
        self.emit(&Event::Plan { steps })
    }

    pub fn failed(&mut self, step: &str, error: &str) -> std::io::Result<()> {
        self.emit(&Event::Failed {
            step: step.into(),
            error: error.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_foreign_lines_are_ignored() {
        let mut buf = Vec::new();
        let mut w = Worker::new(&mut buf);
        w.start("p2p 0->1").unwrap();
        w.done("p2p 0->1", serde_json::json!({"ok": true})).unwrap();
        w.failed("p2p 1->0", "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED")
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let events: Vec<Event> = text.lines().filter_map(parse_line).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0],
            Event::Start {
                step: "p2p 0->1".into()
            }
        );
        assert!(
            parse_line("node1:123:456 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] via P2P/IPC")
                .is_none()
        );
        assert!(parse_line("@rigdoctor {not json").is_none());
    }
}
