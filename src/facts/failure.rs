//! Why a GPU call or step failed, as data: rules match on the library's own codes, never on
//! message text.

use serde::{Deserialize, Serialize};

/// The library whose call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Library {
    Cuda,
    Nvml,
    Nccl,
}

/// A library call that returned an error code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallError {
    pub library: Library,
    /// The call as rigdoctor names it, e.g. `cuMemAlloc of 16777216 bytes on GPU 1`.
    pub call: String,
    /// The raw return code (CUresult, nvmlReturn_t, ncclResult_t).
    pub code: i64,
    /// The code's name as the library gives it (`CUDA_ERROR_NO_DEVICE`); None when the library
    /// does not know the code (a newer driver's), which is then shown as `CUDA error <n>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The library's description: cuGetErrorString, ncclGetLastError (the real cause) or
    /// ncclGetErrorString.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The CUDA context is lost: every later call in the process fails the same way.
    #[serde(default)]
    pub sticky: bool,
}

impl CallError {
    /// The name of the code, or `CUDA error 36` when the library has none for it.
    pub fn code_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => {
                let lib = match self.library {
                    Library::Cuda => "CUDA",
                    Library::Nvml => "NVML",
                    Library::Nccl => "NCCL",
                };
                format!("{lib} error {}", self.code)
            }
        }
    }

    /// A CUDA call that returned `code`.
    pub fn is_cuda(&self, code: i64) -> bool {
        self.library == Library::Cuda && self.code == code
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.code_name())?;
        if let Some(t) = self.text.as_deref().filter(|t| !t.is_empty()) {
            write!(f, " ({t})")?;
        }
        if self.sticky {
            write!(f, " [sticky: the CUDA context is lost]")?;
        }
        Ok(())
    }
}

/// Why a worker step gave no result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StepError {
    /// A library call returned an error.
    Call(CallError),
    /// The step could not run because something it needs failed first (CUDA unusable, say).
    NotRun { because: String },
    /// A library could not be found or loaded (`tried`: what was looked at, and why each failed).
    NotFound { what: String, tried: Vec<String> },
    /// The step was asked for something that does not exist (a device ordinal, say).
    Invalid { message: String },
    /// The worker gave up waiting itself (before the parent's deadline), cleaned up (NCCL:
    /// communicators aborted) and reported: a hang, seen from inside.
    TimedOut {
        what: String,
        #[serde(with = "super::float")]
        after_s: f64,
    },
}

impl StepError {
    pub fn call(&self) -> Option<&CallError> {
        match self {
            StepError::Call(c) => Some(c),
            _ => None,
        }
    }

    pub fn sticky(&self) -> bool {
        self.call().is_some_and(|c| c.sticky)
    }

    pub fn invalid(message: impl Into<String>) -> StepError {
        StepError::Invalid {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Call(c) => c.fmt(f),
            StepError::NotRun { because } => write!(f, "not run: {because}"),
            StepError::NotFound { what, tried } => {
                write!(f, "no usable {what}; tried {}", tried.join("; "))
            }
            StepError::Invalid { message } => f.write_str(message),
            StepError::TimedOut { what, after_s } => {
                write!(f, "{what}: no completion within {after_s:.1} s")
            }
        }
    }
}

impl From<CallError> for StepError {
    fn from(c: CallError) -> Self {
        StepError::Call(c)
    }
}
