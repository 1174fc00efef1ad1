//! Running inside a virtual machine.

use crate::code::Code;
use crate::facts::{Facts, Probed};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

/// DMI vendor/product strings of common hypervisors (systemd-detect-virt's DMI table has the same ones).
const HYPERVISOR_DMI: [&str; 12] = [
    "QEMU",
    "KVM",
    "VMware",
    "VirtualBox",
    "innotek",
    "Xen",
    "Bochs",
    "Parallels",
    "Virtual Machine",
    "Amazon EC2",
    "Google Compute Engine",
    "OpenStack",
];

fn dmi_hits(facts: &Facts) -> Vec<String> {
    let v = &facts.host.virtualization;
    [
        ("sys_vendor", &v.dmi_sys_vendor),
        ("product_name", &v.dmi_product_name),
    ]
    .into_iter()
    .filter_map(|(name, p)| match p {
        Probed::Known(s)
            if HYPERVISOR_DMI.iter().any(|h| s.contains(h)) || s.starts_with("Standard PC (") =>
        {
            Some(format!("DMI {name}: {s}"))
        }
        _ => None,
    })
    .collect()
}

pub fn is_virtual_machine(facts: &Facts) -> bool {
    facts.host.cpu.known().is_some_and(|c| c.hypervisor_flag) || !dmi_hits(facts).is_empty()
}

pub fn virtual_machine(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    if !is_virtual_machine(facts) {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::VirtualMachine,
        Severity::Info,
        "running in a virtual machine: IOMMU, ACS and BAR settings that matter live on the host",
    )
    .fix("run rigdoctor on the hypervisor host to check IOMMU, ACS and Resizable BAR there; never disable ACS inside the VM")
    .fix("the driver often refuses P2P in a VM (nvidia-smi topo -p2p r shows CNS); with QEMU, giving each GPU the same clique id (`-set device.hostpciN.x-nv-gpudirect-clique=0`) lets the driver allow P2P between them")
    .refs([
        "https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html",
        "https://github.com/NVIDIA/nccl/issues/175",
    ]);
    if facts.host.cpu.known().is_some_and(|c| c.hypervisor_flag) {
        f = f.evidence("/proc/cpuinfo: the CPU has the hypervisor flag");
    }
    for hit in dmi_hits(facts) {
        f = f.evidence(hit);
    }
    vec![f]
}
