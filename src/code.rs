//! Finding codes: every id rigdoctor can emit, with the severities it may carry, a one-line
//! summary and its section in docs/findings.md. A finding is made from a [`Code`], so an id
//! that is not here cannot be emitted; tests check the table against the docs both ways.

use crate::finding::Severity;

macro_rules! codes {
    ($($variant:ident $id:literal [$($sev:ident),+] $summary:literal;)+) => {
        /// A finding id, as a type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($variant,)+
        }

        impl Code {
            /// Every code, in the order of docs/findings.md's index.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            /// The stable kebab-case id written in reports.
            pub fn id(self) -> &'static str {
                match self {
                    $(Code::$variant => $id,)+
                }
            }

            /// The severities a finding of this code may carry (the rule picks one from the
            /// evidence; debug builds stop on any other).
            pub fn severities(self) -> &'static [Severity] {
                match self {
                    $(Code::$variant => &[$(Severity::$sev),+],)+
                }
            }

            /// What the finding means, in one line.
            pub fn summary(self) -> &'static str {
                match self {
                    $(Code::$variant => $summary,)+
                }
            }
        }
    };
}

codes! {
    DriverNotLoaded "driver-not-loaded" [Error, Info] "the NVIDIA kernel module is not loaded";
    NouveauBound "nouveau-bound" [Error] "a GPU is driven by nouveau, which CUDA cannot use";
    GpuNotBound "gpu-not-bound" [Warn, Info] "a GPU has no driver, or is held for VFIO passthrough";
    DriverKnownBad "driver-known-bad" [Error, Warn, Info] "this driver release is reported broken for these GPUs";
    DriverLibraryMismatch "driver-library-mismatch" [Error] "the kernel module and the user-space driver are different releases";
    CudaUnavailable "cuda-unavailable" [Error] "the CUDA driver API cannot be used";
    NvmlUnavailable "nvml-unavailable" [Warn] "NVML (the library behind nvidia-smi) cannot be used";
    DeviceOrderMismatch "device-order-mismatch" [Warn] "CUDA numbers the GPUs in another order than the PCI bus";
    PersistenceOff "persistence-off" [Info] "persistence mode is off: each first CUDA call pays driver start-up";
    GpuCopyFailed "gpu-copy-failed" [Error] "a GPU failed its self-test (copies within the GPU)";
    P2pCorrupt "p2p-corrupt" [Error] "peer-to-peer transfers deliver wrong data";
    P2pError "p2p-error" [Error] "a peer-to-peer transfer failed with a CUDA error";
    CopyCorrupt "copy-corrupt" [Error] "copies through host memory deliver wrong data";
    P2pHang "p2p-hang" [Error] "peer-to-peer transfers hang";
    P2pEnableFailed "p2p-enable-failed" [Error] "enabling peer access failed";
    P2pNotSupported "p2p-not-supported" [Info] "CUDA grants no peer-to-peer between two GPUs";
    P2pGates "p2p-gates" [Warn, Info] "what blocks or endangers peer-to-peer, gate by gate";
    NvlinkInactive "nvlink-inactive" [Warn] "some NVLink links of a GPU are down";
    NcclNotFound "nccl-not-found" [Info] "no NCCL library to load";
    NcclHang "nccl-hang" [Error] "NCCL's initialisation or all-reduce hangs";
    NcclError "nccl-error" [Error] "NCCL returned an error";
    NcclWrongResult "nccl-wrong-result" [Error] "the all-reduce sums to wrong values";
    NcclKnownBad "nccl-known-bad" [Error, Warn, Info] "this NCCL release is reported broken here";
    NcclSlow "nccl-slow" [Warn] "the all-reduce is far below what the links measured";
    NcclP2pUnused "nccl-p2p-unused" [Warn, Info] "NCCL copies through host memory where P2P works";
    IommuTranslation "iommu-translation" [Error, Warn] "the IOMMU translates GPU DMA";
    IommuFaults "iommu-faults" [Error] "the kernel logged IOMMU faults for a GPU's DMA";
    AcsRedirect "acs-redirect" [Warn] "PCIe ACS redirects peer traffic up to the CPU";
    AcsNotChecked "acs-not-checked" [Info] "ACS on the bridges between GPUs could not be read";
    PcieLinkDegraded "pcie-link-degraded" [Warn] "a GPU link trained narrower or slower than card and slot support";
    PcieReplayErrors "pcie-replay-errors" [Warn] "a GPU link retransmitted packets while copies ran";
    BandwidthLow "bandwidth-low" [Warn] "a copy is far below what its link carries";
    BandwidthImpossible "bandwidth-impossible" [Error] "a figure exceeds what its link can carry: the copy did not cross it";
    P2pSlowerThanHost "p2p-slower-than-host" [Warn] "peer-to-peer is slower than copying through host memory";
    Throttling "throttling" [Warn] "a GPU throttled its clocks while copies ran (heat or a software cap)";
    PowerBrake "power-brake" [Warn] "the power supply side braked a GPU's clocks under load";
    PcieSlotLimited "pcie-slot-limited" [Info] "a link is limited by the slot, not the card";
    PcieAerErrors "pcie-aer-errors" [Error, Warn] "PCIe Advanced Error Reporting counted errors on a GPU";
    GpuFellOffBus "gpu-fell-off-bus" [Error] "a GPU stopped answering on PCIe (Xid 79)";
    XidErrors "xid-errors" [Error, Warn, Info] "the NVIDIA driver logged Xid errors for a GPU";
    SmallBar1 "small-bar1" [Info] "Resizable BAR is off";
    VirtualMachine "virtual-machine" [Info] "rigdoctor runs in a virtual machine";
    ShmTooSmall "shm-too-small" [Warn] "/dev/shm is too small for NCCL's shared-memory transport";
    NcclEnvOverride "nccl-env-override" [Warn, Info] "NCCL or CUDA settings in the environment change what jobs do";
    WorkerCrashed "worker-crashed" [Error] "a GPU test worker died";
    WorkerExitFailed "worker-exit-failed" [Warn] "a GPU test worker did not exit cleanly after its steps";
    NotChecked "not-checked" [Warn, Info] "part of the machine could not be read: its checks did not run";
    TimeoutTooShort "timeout-too-short" [Warn] "steps were killed under a --timeout too short to judge them";
    AddressSpaceLimited "address-space-limited" [Error, Warn] "a finite ulimit -v keeps CUDA from starting";
    P2pNotTested "p2p-not-tested" [Info] "check skipped the P2P transfers on purpose (an accepted p2p-hang)";
    BaselineRegression "baseline-regression" [Warn, Info] "since the saved baseline, figures fell or facts changed";
    FleetVersionDrift "fleet-version-drift" [Warn] "nodes run different driver, CUDA, NCCL or kernel releases";
    FleetConfigDrift "fleet-config-drift" [Warn] "nodes with the same GPUs are configured differently";
    FleetOutlier "fleet-outlier" [Warn] "a node's or a GPU's measured figure is well below its peers'";
    ClusterIncomplete "cluster-incomplete" [Error] "not every rank of a cluster run joined, or a rank left before the end";
    ClusterVersionDrift "cluster-version-drift" [Error, Warn] "the nodes of a cluster run differ in rigdoctor, driver, CUDA, NCCL or kernel version";
    ClusterSlowLink "cluster-slow-link" [Warn] "the all-reduce between two nodes is far slower than between the others";
}

impl Code {
    /// The code with this id.
    pub fn from_id(id: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.id() == id)
    }

    /// Where the code is explained: its heading's anchor in docs/findings.md.
    pub fn docs(self) -> String {
        format!("docs/findings.md#{}", self.id())
    }

    /// Its entry in docs/findings.md (built in): from its heading to the next one.
    pub fn docs_section(self) -> Option<&'static str> {
        section(FINDINGS_DOC, self.id())
    }
}

/// docs/findings.md, as `rigdoctor explain` prints it.
pub const FINDINGS_DOC: &str = include_str!("../docs/findings.md");

/// The section of `doc` under the heading of `id`, heading included, up to the next heading.
fn section<'a>(doc: &'a str, id: &str) -> Option<&'a str> {
    let head = format!("## `{id}`\n");
    let start = doc.find(&head)?;
    let rest = &doc[start..];
    let end = rest[head.len()..]
        .find("\n## ")
        .map_or(rest.len(), |e| e + head.len());
    Some(&rest[..end])
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_documented_with_its_severities() {
        for &c in Code::ALL {
            let s = c
                .docs_section()
                .unwrap_or_else(|| panic!("{c} has no heading in docs/findings.md"));
            if s.contains("Severity from") || s.contains("Severity is") {
                continue;
            }
            for sev in c.severities() {
                assert!(
                    s.contains(&format!("**{}", sev.label())),
                    "docs/findings.md: {c} does not say when it is {}",
                    sev.label()
                );
            }
        }
    }

    #[test]
    fn every_documented_heading_is_a_code() {
        for line in FINDINGS_DOC.lines().filter(|l| l.starts_with("## `")) {
            let id = line.trim_start_matches("## `").trim_end_matches('`');
            assert!(
                Code::from_id(id).is_some(),
                "docs/findings.md documents {id:?}, which is no code"
            );
        }
        let ids: std::collections::HashSet<&str> = Code::ALL.iter().map(|c| c.id()).collect();
        assert_eq!(ids.len(), Code::ALL.len(), "an id is listed twice");
    }
}
