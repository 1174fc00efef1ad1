//! What became of each worker process: how it ended, and the tail of what it printed.

use serde::{Deserialize, Serialize};

/// One worker process of the run (the first runs everything unless a step hangs or the CUDA
/// context is lost; then a fresh one takes the remaining steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// 1 = the first worker.
    pub index: usize,
    /// Steps it settled (finished, failed or hung in).
    pub steps: usize,
    /// The step it was running when it ended; None when it ended between steps or after its
    /// last one.
    pub during: Option<String>,
    pub exit: WorkerExit,
    /// The last lines it wrote on stdout and stderr (libraries' messages), bounded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// Soft resource limits (getrlimit(2)) of the process that started the workers, which they
/// inherit; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessLimits {
    /// RLIMIT_AS (`ulimit -v`), bytes of virtual address space.
    pub address_space: Option<u64>,
    /// RLIMIT_DATA (`ulimit -d`), bytes of data segment and private mappings.
    pub data: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum WorkerExit {
    /// It exited by itself with this status.
    Exited { code: i32 },
    /// A signal ended it that rigdoctor did not send (a segfault in a driver library, the OOM
    /// killer, `kill -9`).
    Signaled { signal: i32, name: String },
    /// rigdoctor killed it: a step overran its deadline.
    KilledAfterHang { unkillable: bool },
    /// It had finished every step but did not exit within the deadline (a library's teardown
    /// hung); rigdoctor killed it.
    HungOnExit {
        #[serde(with = "super::float")]
        waited_s: f64,
        unkillable: bool,
    },
    /// The run was interrupted; rigdoctor stopped it.
    Interrupted,
    /// It could not be started.
    NotStarted { error: String },
}

impl WorkerRecord {
    /// The worker died on its own while running a step.
    pub fn crashed_mid_step(&self) -> bool {
        self.during.is_some()
            && matches!(
                self.exit,
                WorkerExit::Exited { .. } | WorkerExit::Signaled { .. }
            )
    }

    /// The worker finished its steps but then crashed, failed or hung on the way out.
    pub fn bad_exit(&self) -> bool {
        self.during.is_none()
            && match self.exit {
                WorkerExit::Exited { code } => code != 0,
                WorkerExit::Signaled { .. } | WorkerExit::HungOnExit { .. } => true,
                _ => false,
            }
    }
}

impl std::fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerExit::Exited { code } => write!(f, "exited with status {code}"),
            WorkerExit::Signaled { signal, name } => {
                write!(f, "was killed by signal {signal} ({name})")
            }
            WorkerExit::KilledAfterHang { unkillable } => write!(
                f,
                "was killed after a step overran its deadline{}",
                if *unkillable {
                    " (and could not be reaped: stuck in the kernel driver)"
                } else {
                    ""
                }
            ),
            WorkerExit::HungOnExit {
                waited_s,
                unkillable,
            } => write!(
                f,
                "finished its steps but did not exit within {waited_s:.1} s; rigdoctor killed it{}",
                if *unkillable {
                    " (it could not be reaped: stuck in the kernel driver)"
                } else {
                    ""
                }
            ),
            WorkerExit::Interrupted => write!(f, "was stopped: the run was interrupted"),
            WorkerExit::NotStarted { error } => write!(f, "could not be started: {error}"),
        }
    }
}
