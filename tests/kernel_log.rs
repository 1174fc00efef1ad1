//! The kernel log under --sysroot: Xid errors, GPUs fallen off the bus, IOMMU faults, and the
//! AER and link lines other findings cite. The lines are the kernel's and the NVIDIA module's
//! own formats (see the parsers in src/probe/kernel_log/events.rs).

mod common;

use common::*;
use serde_json::Value;

/// The story rig: three 3090s on risers behind Zen 1 root ports, IOMMU translating.
const TR: &str = "x399-3x3090-r545";
const HEALTHY: &str = "x570-2x3090-r535";

fn with_kmsg(rig: &str, lines: &[&str]) -> Value {
    rig_findings(
        rig,
        |r| r.kmsg = lines.iter().map(|l| l.to_string()).collect(),
        &[],
    )
}

fn ids(report: &Value) -> Vec<String> {
    summary(report)
}

fn one<'a>(report: &'a Value, id: &str) -> &'a Value {
    let f = findings(report, id);
    assert_eq!(f.len(), 1, "{id}: {:?}", ids(report));
    f[0]
}

#[test]
fn a_riser_that_drops_a_gpu_is_named_with_its_port_and_the_errors_before() {
    let r = with_kmsg(
        TR,
        &[
            "3000.1 pcieport 0000:00:03.1: AER: Corrected error message received from 0000:0a:00.0",
            "3000.1 nvidia 0000:0a:00.0: AER: PCIe Bus Error: severity=Correctable, type=Physical Layer, (Receiver ID)",
            "3000.1 nvidia 0000:0a:00.0: AER:   device [10de:2204] error status/mask=00000001/0000e000",
            "3000.1 nvidia 0000:0a:00.0: AER:    [ 0] RxErr                  (First)",
            "3400.7 nvidia 0000:0a:00.0: AER: PCIe Bus Error: severity=Correctable, type=Data Link Layer, (Transmitter ID)",
            "3400.7 nvidia 0000:0a:00.0: AER:    [12] Timeout               ",
            "3600.0 NVRM: GPU at PCI:0000:0a:00: GPU-5b7e1a2c-3f4d-4e5f-8a9b-0c1d2e3f4a5b",
            "3600.0 NVRM: Xid (PCI:0000:0a:00): 79, pid=4242, name=python3, GPU has fallen off the bus.",
            "3600.0 NVRM: GPU 0000:0a:00.0: GPU has fallen off the bus.",
            "3600.2 NVRM: Xid (PCI:0000:0a:00): 154, pid=4242, name=python3, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
        ],
    );
    let f = one(&r, "gpu-fell-off-bus");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["gpus"][0], "0000:0a:00.0");
    let ev = text(&f["evidence"]);
    assert!(ev.contains("Xid 79"), "{ev}");
    // The AER reports of that GPU come with it, and the fix names its slot's port.
    assert!(ev.contains("2 AER report(s) from 0000:0a:00.0"), "{ev}");
    assert!(ev.contains("RxErr, Timeout"), "{ev}");
    let fix = text(&f["fix"]);
    assert!(fix.contains("port 0000:00:03.1"), "{fix}");
    assert!(fix.contains("riser") && fix.contains("PSU"), "{fix}");
    // The AER finding cites the kernel's reports; the 154 after the fall is the burst's
    // consequence, not an Xid finding of its own.
    assert!(text(&one(&r, "pcie-aer-errors")["evidence"]).contains("kernel log: 2 AER report(s)"));
    assert!(findings(&r, "xid-errors").is_empty(), "{:?}", ids(&r));
}

#[test]
fn io_page_faults_of_a_gpu_prove_the_iommu_is_in_the_way() {
    let r = with_kmsg(
        TR,
        &[
            "120.5 nvidia 0000:0a:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x000d address=0xfd000000 flags=0x0020]",
            "120.5 nvidia 0000:0a:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x000d address=0xfd001000 flags=0x0020]",
            "121.0 AMD-Vi: Event logged [IO_PAGE_FAULT device=42:00.0 domain=0x000e address=0xfc000000 flags=0x0020]",
        ],
    );
    let faults = findings(&r, "iommu-faults");
    assert_eq!(faults.len(), 2, "{:?}", ids(&r));
    assert!(faults.iter().all(|f| f["severity"] == "error"));
    assert!(text(&faults[0]["evidence"]).contains("2 IO_PAGE_FAULT fault(s)"));
    assert!(text(&faults[0]["fix"]).contains("iommu=pt"));
    let t = one(&r, "iommu-translation");
    assert_eq!(t["severity"], "error", "faults make translation an error");
    assert!(text(&t["evidence"]).contains("IOMMU fault(s) for 0000:0a:00.0"));
    // Without the faults the same rig is a warning.
    let r = with_kmsg(TR, &[]);
    assert_eq!(one(&r, "iommu-translation")["severity"], "warn");
    assert!(findings(&r, "iommu-faults").is_empty());
}

#[test]
fn intel_dmar_faults_name_the_gpu_without_a_domain() {
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.kmsg = vec![
                "50.0 DMAR: DRHD: handling fault status reg 2".into(),
                format!(
                    "50.0 DMAR: [DMA Read NO_PASID] Request device [{}] fault addr 0xfee00000 [fault reason 0x06] PTE Read access is not set",
                    r.gpu[1].bdf.trim_start_matches("0000:")
                ),
            ]
        },
        &[],
    );
    let f = one(&r, "iommu-faults");
    assert!(text(&f["evidence"]).contains("DMA Read"));
}

#[test]
fn xids_are_reported_per_gpu_first_of_each_burst() {
    let r = with_kmsg(
        TR,
        &[
            "100.0 NVRM: Xid (PCI:0000:42:00): 13, pid=900, name=python3, Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address",
            "100.1 NVRM: Xid (PCI:0000:42:00): 43, pid=900, name=python3, Ch 00000008",
            "5000.0 NVRM: Xid (PCI:0000:42:00): 13, pid=901, name=python3, Graphics Exception: ESR 0x505648=0x102000e",
        ],
    );
    let f = one(&r, "xid-errors");
    // Xid 13 is the program's (NVIDIA's catalogue): a note, not a rig fault.
    assert_eq!(f["severity"], "info");
    assert_eq!(f["gpus"][0], "0000:42:00.0");
    let ev = text(&f["evidence"]);
    assert!(ev.contains("then 1 more within the burst (Xid 43)"), "{ev}");
    assert_eq!(ev.matches("pid 9").count(), 2, "two bursts: {ev}");
    assert!(ev.contains("before the log's last line"), "{ev}");
}

#[test]
fn link_lines_join_the_degraded_link_finding() {
    let r = rig_findings(
        HEALTHY,
        |r| {
            let g = &mut r.gpu[0];
            g.link.width = 4;
            let bdf = g.bdf.clone();
            let port = g.parent.clone();
            r.kmsg = vec![format!("1.2 pci {bdf}: 31.504 Gb/s available PCIe bandwidth, limited by 8.0 GT/s PCIe x4 link at {port} (capable of 252.048 Gb/s with 16.0 GT/s PCIe x16 link)")];
        },
        &[],
    );
    let f = findings(&r, "pcie-link-degraded");
    assert!(!f.is_empty(), "{:?}", ids(&r));
    assert!(text(&f[0]["evidence"]).contains("limited by a 8.0 GT/s PCIe x4 link"));
}

#[test]
fn a_healthy_boot_log_adds_nothing_and_a_missing_one_is_said() {
    let r = rig_findings(HEALTHY, |_| {}, &[]);
    assert_eq!(ids(&r), ["info pcie-slot-limited"]);
    let r = rig_findings(HEALTHY, |r| r.no_kernel_log = true, &[]);
    let f = one(&r, "not-checked");
    assert_eq!(f["severity"], "info");
    assert!(text(&f["evidence"]).contains("the kernel log"));
    // A kern.log of an earlier boot only: this boot's log has none of it.
    let r = rig_findings(
        HEALTHY,
        |r| {
            r.kern_log = Some(format!(
                "Nov 30 09:00:00 rig kernel: [    0.000000] Linux version {k}\n\
                 Nov 30 09:10:00 rig kernel: [  600.000000] NVRM: Xid (PCI:{b}): 79, pid=1, name=x, GPU has fallen off the bus.\n\
                 Dec  1 08:00:00 rig kernel: [    0.000000] Linux version {k}\n\
                 Dec  1 08:00:04 rig kernel: [    4.100000] nvidia: loading out-of-tree module taints kernel.\n",
                k = r.kernel,
                b = r.gpu[0].bdf.trim_end_matches(".0"),
            ))
        },
        &[],
    );
    assert_eq!(ids(&r), ["info pcie-slot-limited"]);
}
