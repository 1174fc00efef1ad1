//! What the NVML and CUDA inventories say about the driver stack and device numbering.

use super::gpus;
use crate::code::Code;
use crate::facts::{Facts, GpuRuntime, Library, Probed, Why};
use crate::finding::{Finding, Severity};
use crate::knowledge::Knowledge;

const PERSISTENCE_DOC: &str = "https://docs.nvidia.com/deploy/driver-persistence/index.html";

/// The GPU steps ran on a machine whose NVIDIA kernel module is loaded (otherwise
/// `driver-not-loaded` already says everything).
fn runtime(facts: &Facts) -> Option<&GpuRuntime> {
    facts.gpu.as_ref().filter(|_| facts.driver.loaded)
}

fn detail(p: &Probed<impl Sized>) -> Option<(Why, &str)> {
    match p {
        Probed::Unknown {
            unknown, detail, ..
        } => Some((*unknown, detail.as_str())),
        Probed::Known(_) => None,
    }
}

/// CUresult / nvmlReturn_t codes these rules act on (cuda.h, nvml.h).
const CUDA_ERROR_STUB_LIBRARY: i64 = 34;
const CUDA_ERROR_NO_DEVICE: i64 = 100;
const CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: i64 = 803;
const NVML_ERROR_LIB_RM_VERSION_MISMATCH: i64 = 18;

/// Kernel module and user-space library from different driver releases: NVML says so by name,
/// CUDA with CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, or the versions simply differ.
fn mismatch_evidence(facts: &Facts, rt: &GpuRuntime) -> Vec<String> {
    let mut ev = Vec::new();
    if let Some(c) = rt
        .nvml
        .cause()
        .filter(|c| c.library == Library::Nvml && c.code == NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    {
        ev.push(format!("NVML: {c}"));
    }
    if let Some(c) = rt
        .cuda
        .cause()
        .filter(|c| c.is_cuda(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH))
    {
        ev.push(format!("CUDA: {c}"));
    }
    let kernel = facts.driver.version.known();
    let user = rt.nvml.known().and_then(|n| n.driver_version.known());
    if let (Some(k), Some(u)) = (kernel, user) {
        if k != u {
            ev.push(format!(
                "kernel module {k} (/proc/driver/nvidia/version), user-space library {u} (NVML)"
            ));
        }
    }
    ev
}

pub fn driver_library_mismatch(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(rt) = runtime(facts) else {
        return Vec::new();
    };
    let ev = mismatch_evidence(facts, rt);
    if ev.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::DriverLibraryMismatch,
        Severity::Error,
        "the loaded NVIDIA kernel module and the user-space driver libraries are from different releases",
    )
    .fix("reboot, so the kernel loads the module that matches the installed libraries (typical after an unattended driver upgrade)")
    .fix("then keep them in step: sudo apt-mark hold 'nvidia-driver-*' 'libnvidia-*' (release the hold when you upgrade on purpose)")
    .refs(["https://github.com/oddmario/NVIDIA-Ubuntu-Driver-Guide/issues/4"]);
    for e in ev {
        f = f.evidence(e);
    }
    vec![f]
}

/// The help for a library that could not be used, chosen from why and the failed call's code.
fn library_help(f: Finding, p: &Probed<impl Sized>, why: Why, detail: &str, lib: &str) -> Finding {
    let f = f.evidence(format!("{lib}: {detail}"));
    let code = p.cause().map(|c| (c.library, c.code));
    match (why, code) {
        (Why::Hang, _) => f
            .fix("a GPU that does not answer: look for Xid errors with sudo dmesg | grep -i xid, and check `nvidia-smi` answers")
            .fix("if it hangs too, reboot (a GPU that fell off the bus needs a power cycle)"),
        // The library could not be opened at all.
        (Why::Absent, None) => f
            .fix("install the driver's user-space part matching the kernel module (Ubuntu: the libnvidia-compute-<branch> package), or put its directory on the loader path; in a container, start it with the NVIDIA container toolkit (docker run --gpus all)"),
        (_, Some((Library::Cuda, CUDA_ERROR_STUB_LIBRARY))) => f
            .fix("the CUDA toolkit's stub libcuda (…/cuda/lib64/stubs) is on the loader path before the driver's: remove the stubs directory from LD_LIBRARY_PATH"),
        (_, Some((Library::Cuda, CUDA_ERROR_NO_DEVICE))) => f
            .fix("CUDA sees no GPU: check CUDA_VISIBLE_DEVICES (an empty or wrong value hides every GPU) and that /dev/nvidia* exist and are readable by your user"),
        _ => f.fix("read the driver's complaint: sudo dmesg | grep -i -e nvrm -e nvidia"),
    }
}

pub fn cuda_unavailable(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(rt) = runtime(facts) else {
        return Vec::new();
    };
    let Some((why, d)) = detail(&rt.cuda) else {
        return Vec::new();
    };
    if !mismatch_evidence(facts, rt).is_empty() || super::host_limits::explains_gpu_failures(facts)
    {
        return Vec::new();
    }
    let title = match why {
        Why::Hang => "CUDA initialisation hung: the GPU or the driver does not answer",
        _ => "the CUDA driver cannot be used, although the NVIDIA kernel module is loaded",
    };
    let f = Finding::new(Code::CudaUnavailable, Severity::Error, title)
        .gpus(gpus(facts).iter().map(|g| g.bdf.clone()));
    vec![library_help(f, &rt.cuda, why, d, "libcuda")
        .refs(["https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__TYPES.html"])]
}

pub fn nvml_unavailable(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(rt) = runtime(facts) else {
        return Vec::new();
    };
    let Some((why, d)) = detail(&rt.nvml) else {
        return Vec::new();
    };
    if !mismatch_evidence(facts, rt).is_empty() {
        return Vec::new();
    }
    let f = Finding::new(
        Code::NvmlUnavailable,
        Severity::Warn,
        "NVML (the library behind nvidia-smi) cannot be used: GPU link, BAR1 and power facts are missing",
    );
    vec![library_help(f, &rt.nvml, why, d, "libnvidia-ml")
        .refs(["https://docs.nvidia.com/deploy/nvml-api/index.html"])]
}

/// CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID; nvidia-smi, NVML and
/// most monitoring number them in PCI bus order. When the two differ, `cuda:0` is not GPU 0 of
/// nvidia-smi.
pub fn device_order_mismatch(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(rt) = runtime(facts) else {
        return Vec::new();
    };
    if rt.cuda_device_order.as_deref() == Some("PCI_BUS_ID")
        || facts.env.vars.contains_key("CUDA_VISIBLE_DEVICES")
    {
        return Vec::new();
    }
    let Some(cuda) = rt.cuda.known() else {
        return Vec::new();
    };
    let mut pci_order: Vec<&str> = cuda.devices.iter().map(|d| d.bus_id.as_str()).collect();
    pci_order.sort();
    let differing: Vec<String> = cuda
        .devices
        .iter()
        .zip(&pci_order)
        .enumerate()
        .filter(|(_, (d, p))| d.bus_id != **p)
        .map(|(i, (d, p))| {
            format!(
                "CUDA device {i} is {} ({}); nvidia-smi's GPU {i} is {p}",
                d.bus_id, d.name
            )
        })
        .collect();
    if differing.is_empty() {
        return Vec::new();
    }
    let mut f = Finding::new(
        Code::DeviceOrderMismatch,
        Severity::Warn,
        "CUDA numbers the GPUs differently from nvidia-smi: cuda:N is not nvidia-smi's GPU N",
    )
    .evidence("CUDA_DEVICE_ORDER is not set to PCI_BUS_ID")
    .fix("export CUDA_DEVICE_ORDER=PCI_BUS_ID (in your shell profile or job script), or select GPUs by UUID in CUDA_VISIBLE_DEVICES")
    .refs(["https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#env-vars"]);
    for d in differing {
        f = f.evidence(d);
    }
    vec![f]
}

/// Without persistence mode the driver tears GPU state down when the last client exits, so
/// every job start pays seconds of initialisation.
pub fn persistence_off(facts: &Facts, _: &Knowledge) -> Vec<Finding> {
    let Some(nvml) = runtime(facts).and_then(|rt| rt.nvml.known()) else {
        return Vec::new();
    };
    let off: Vec<String> = nvml
        .devices
        .iter()
        .filter(|d| d.persistence_mode.known() == Some(&false))
        .filter_map(|d| d.bus_id.known().cloned())
        .collect();
    if off.is_empty() {
        return Vec::new();
    }
    vec![Finding::new(
        Code::PersistenceOff,
        Severity::Info,
        "persistence mode is off: each CUDA job start re-initialises the GPUs (seconds)",
    )
    .evidence(format!(
        "nvmlDeviceGetPersistenceMode: disabled on {}",
        off.join(", ")
    ))
    .gpus(off)
    .fix("sudo systemctl enable --now nvidia-persistenced")
    .refs([PERSISTENCE_DOC])]
}
