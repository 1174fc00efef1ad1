//! The typed protocol between the parent and a worker process.
//!
//! The worker gets its plan (a JSON list of typed steps) in the environment variable
//! [`PLAN_ENV`] and reports on a pipe of its own, whose file descriptor is in [`FD_ENV`]: one
//! JSON [`Event`] per line. Nothing else writes there, so what libraries print on stdout or
//! stderr (NCCL's log, block-buffered on a pipe, can cut a line anywhere) never touches the
//! protocol; the parent keeps those streams as the worker's log.

use crate::facts::StepError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Write;

pub const PLAN_ENV: &str = "RIGDOCTOR_WORKER_PLAN";
/// The worker's end of the event pipe (a decimal file descriptor).
pub const FD_ENV: &str = "RIGDOCTOR_WORKER_FD";
/// The parent's pid: a worker whose parent changed (rigdoctor died before the worker could be
/// told) exits at once.
pub const PARENT_ENV: &str = "RIGDOCTOR_WORKER_PARENT";

/// The message types of one kind of worker.
pub trait Protocol: 'static {
    type Step: Serialize
        + DeserializeOwned
        + Clone
        + PartialEq
        + Debug
        + std::fmt::Display
        + Send
        + Sync
        + 'static;
    type Answer: Serialize + DeserializeOwned + Clone + Debug + Send + 'static;
    type Note: Serialize + DeserializeOwned + Clone + Debug + Send + 'static;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
#[serde(bound(
    serialize = "S: Serialize, A: Serialize, N: Serialize",
    deserialize = "S: DeserializeOwned, A: DeserializeOwned, N: DeserializeOwned"
))]
pub enum Event<S, A, N> {
    /// The worker begins a step: the deadline for it starts now.
    Start { step: S },
    /// The step finished with a result.
    Done { step: S, result: A },
    /// The step ran and failed without hanging (a CUDA error, say).
    Failed { step: S, error: StepError },
    /// Partial progress of the running step: if the step then hangs, the notes say how far it
    /// got.
    Note { step: S, note: N },
    /// More steps, appended to the plan: a step can decide what follows (the pairs to test
    /// once the devices are known) without a second worker paying CUDA initialisation again.
    Plan { steps: Vec<S> },
}

pub type EventOf<P> = Event<<P as Protocol>::Step, <P as Protocol>::Answer, <P as Protocol>::Note>;

/// Decode one line of the event pipe.
pub fn parse_event<P: Protocol>(line: &str) -> Result<EventOf<P>, String> {
    serde_json::from_str(line).map_err(|e| e.to_string())
}

/// The steps a worker was asked to run, from [`PLAN_ENV`].
pub fn read_plan<S: DeserializeOwned>() -> Result<Vec<S>, String> {
    let raw = std::env::var(PLAN_ENV).map_err(|_| format!("{PLAN_ENV} is not set"))?;
    serde_json::from_str(&raw).map_err(|e| format!("{PLAN_ENV}: {e}"))
}

/// The worker's side: a writer for its events.
pub struct Sender<W: Write> {
    out: W,
}

impl Sender<std::fs::File> {
    /// The event pipe the parent passed in [`FD_ENV`].
    pub fn from_env() -> Result<Self, String> {
        use std::os::fd::FromRawFd;
        let raw = std::env::var(FD_ENV).map_err(|_| format!("{FD_ENV} is not set"))?;
        let fd: i32 = raw
            .parse()
            .map_err(|_| format!("{FD_ENV}: not a file descriptor: {raw:?}"))?;
        // SAFETY: fstat on any integer is harmless; it tells whether the descriptor is open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if fd < 3 || unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(format!("{FD_ENV}: descriptor {fd} is not open"));
        }
        // SAFETY: the parent opened this descriptor for us and nothing else in the worker owns it.
        Ok(Sender::new(unsafe { std::fs::File::from_raw_fd(fd) }))
    }
}

impl<W: Write> Sender<W> {
    pub fn new(out: W) -> Self {
        Sender { out }
    }

    pub fn send<S: Serialize, A: Serialize, N: Serialize>(
        &mut self,
        e: &Event<S, A, N>,
    ) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        // One write per event, unbuffered: the parent's deadline runs on what it has seen.
        self.out.write_all(&line)?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    struct Plain;
    impl Protocol for Plain {
        type Step = String;
        type Answer = Value;
        type Note = Value;
    }

    #[test]
    fn events_round_trip_and_garbage_is_an_error() {
        let mut buf = Vec::new();
        let mut w = Sender::new(&mut buf);
        w.send(&EventOf::<Plain>::Start { step: "a".into() })
            .unwrap();
        w.send(&EventOf::<Plain>::Failed {
            step: "a".into(),
            error: StepError::invalid("no such device"),
        })
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let events: Vec<EventOf<Plain>> = text
            .lines()
            .map(|l| parse_event::<Plain>(l).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[1], Event::Failed { error, .. } if error.to_string() == "no such device")
        );
        assert!(parse_event::<Plain>("{not json").is_err());
        assert!(parse_event::<Plain>("NCCL INFO Channel 00 : 0[0] -> 1[1] via P2P/IPC").is_err());
    }
}
