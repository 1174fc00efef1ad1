//! Shared memory and environment settings that change what NCCL does.

use super::{gpus, NCCL_TROUBLESHOOTING};
use crate::code::Code;
use crate::facts::{Facts, Probed};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

const NCCL_ENV_DOC: &str = "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html";
/// NCCL's troubleshooting guide asks containers for `--shm-size=1g` at least.
const MIN_SHM: u64 = 1 << 30;

pub fn shm_too_small(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    if gpus(facts).len() < 2 {
        return Vec::new();
    }
    let (evidence, title) = match &facts.host.shm {
        Probed::Known(s) if !s.mounted => (
            "no /dev/shm mount in /proc/mounts".to_string(),
            "/dev/shm is not mounted: NCCL's shared-memory transport cannot work",
        ),
        Probed::Known(s) if s.size_bytes < MIN_SHM => (
            format!("/dev/shm: {} MiB ({})", s.size_bytes >> 20, s.source),
            "/dev/shm is too small for NCCL's shared-memory transport",
        ),
        // Not read: `not-checked` says so.
        _ => return Vec::new(),
    };
    let markers = &facts.host.virtualization.container_markers;
    let mut f = Finding::new(Code::ShmTooSmall, Severity::Warn, title)
        .evidence(evidence)
        .refs([NCCL_TROUBLESHOOTING]);
    if markers.is_empty() {
        f = f.fix("sudo mount -o remount,size=8G /dev/shm (and set size=8G on the /dev/shm line of /etc/fstab to keep it)");
    } else {
        f = f
            .evidence(format!("container: {}", markers.join(", ")))
            .fix("restart the container with --ipc=host, or with --shm-size=8g --ulimit memlock=-1 (docker/podman run); Kubernetes: mount an emptyDir with medium: Memory at /dev/shm");
    }
    vec![f.fix("NCCL fails with 'failed to extend /dev/shm/nccl-...' or falls back to slower paths when it runs out")]
}

fn truthy(v: &str) -> bool {
    !matches!(v.trim(), "" | "0")
}

/// One override that is worth a line in the report.
struct Override {
    severity: Severity,
    evidence: String,
    fix: String,
}

/// The P2P battery of this report: (every tested direction correct, directions tested); None
/// when it did not run or tested nothing.
fn p2p_verified(facts: &Facts) -> Option<(bool, usize)> {
    let tests = &facts.gpu.as_ref()?.p2p.as_ref()?.tests;
    if tests.is_empty() {
        return None;
    }
    Some((!tests.iter().any(|t| t.outcome.broken()), tests.len()))
}

pub fn nccl_env_override(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let env = &facts.env;
    let set = |k: &str| {
        env.lookup(k)
            .map(|(v, src)| (v.clone(), format!("{k}={v} ({src})")))
    };
    let mut found: Vec<Override> = Vec::new();
    let p2p_off = set("NCCL_P2P_DISABLE").filter(|(v, _)| truthy(v));
    let shm_off = set("NCCL_SHM_DISABLE").filter(|(v, _)| truthy(v));
    if let Some((_, ev)) = &p2p_off {
        found.push(match p2p_verified(facts) {
            // Measured in this run: P2P works, so the override only costs speed.
            Some((true, n)) => Override {
                severity: Severity::Warn,
                evidence: format!("{ev}; yet P2P verified correct on all {n} tested directions in this run"),
                fix: "P2P works on this rig: unset NCCL_P2P_DISABLE (environment, job scripts, /etc/nccl.conf) and NCCL uses it again, faster".into(),
            },
            Some((false, n)) => Override {
                severity: Severity::Info,
                evidence: format!("{ev}; P2P failed in this run (of {n} directions tested): the override is what keeps jobs working"),
                fix: "keep NCCL_P2P_DISABLE=1 until the P2P findings above are fixed, then unset it".into(),
            },
            None => Override {
                severity: Severity::Info,
                evidence: ev.clone(),
                fix: "NCCL_P2P_DISABLE=1 sends all GPU-to-GPU traffic through host memory: keep it only while P2P is broken on this rig, and unset it (environment, job scripts, /etc/nccl.conf) once `rigdoctor p2p` verifies P2P".into(),
            },
        });
    }
    if let Some((_, ev)) = &shm_off {
        let both = p2p_off.is_some();
        found.push(Override {
            severity: if both { Severity::Warn } else { Severity::Info },
            evidence: ev.clone(),
            fix: if both {
                "with both P2P and SHM disabled, NCCL moves data between local GPUs over the network stack (sockets or IB): unset NCCL_SHM_DISABLE".into()
            } else {
                "NCCL_SHM_DISABLE=1 removes NCCL's shared-memory path between GPUs that cannot use P2P: unset it unless you are working around a shm problem".into()
            },
        });
    }
    if let Some((v, ev)) = set("NCCL_P2P_LEVEL") {
        if matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "LOC" | "PIX" | "PXB" | "0" | "1" | "2"
        ) {
            found.push(Override {
                severity: Severity::Info,
                evidence: ev,
                fix: "NCCL_P2P_LEVEL at LOC/PIX/PXB allows P2P only between GPUs under the same PCIe switch; on boards without one (most Threadripper/EPYC/desktop boards) GPUs are PHB/NODE apart, so this silently turns P2P off".into(),
            });
        }
    }
    for k in ["NCCL_ALGO", "NCCL_PROTO"] {
        if let Some((_, ev)) = set(k) {
            found.push(Override {
                severity: Severity::Info,
                evidence: ev,
                fix: format!("{k} overrides NCCL's tuning; unset it unless you are testing"),
            });
        }
    }
    if let Some((_, ev)) = set("CUDA_LAUNCH_BLOCKING").filter(|(v, _)| truthy(v)) {
        found.push(Override {
            severity: Severity::Warn,
            evidence: ev,
            fix: "CUDA_LAUNCH_BLOCKING=1 is incompatible with NCCL and can deadlock collectives: unset it outside debugging".into(),
        });
    }
    if found.is_empty() {
        return Vec::new();
    }
    let severity = found
        .iter()
        .map(|o| o.severity)
        .max()
        .unwrap_or(Severity::Info);
    let mut f = Finding::new(
        Code::NcclEnvOverride,
        severity,
        "environment settings override NCCL's own choices",
    )
    .refs([
        NCCL_ENV_DOC,
        "https://github.com/pytorch/pytorch/issues/1637",
    ]);
    for o in found {
        f = f.evidence(o.evidence).fix(o.fix);
    }
    vec![f]
}
