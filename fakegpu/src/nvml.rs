//! The NVML calls rigdoctor makes, answered from the rig. Devices are numbered in PCI bus
//! order, as the real library numbers them; a handle is its index + 1.

use crate::{rig, write_cstr};
use std::ffi::{c_char, c_uint, c_ulonglong, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

type Ret = c_uint;
const SUCCESS: Ret = 0;
const UNINITIALIZED: Ret = 1;
const INVALID_ARGUMENT: Ret = 2;
const NOT_SUPPORTED: Ret = 3;
const NOT_FOUND: Ret = 6;
const INSUFFICIENT_SIZE: Ret = 7;
const DRIVER_NOT_LOADED: Ret = 9;
const LIB_RM_VERSION_MISMATCH: Ret = 18;

static INITIALISED: AtomicBool = AtomicBool::new(false);

#[repr(C)]
pub struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

#[repr(C)]
pub struct MemoryV2 {
    version: c_uint,
    total: c_ulonglong,
    reserved: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[repr(C)]
pub struct Bar1 {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

fn device(h: *mut c_void) -> Result<&'static crate::rig::Gpu, Ret> {
    if !INITIALISED.load(Ordering::SeqCst) {
        return Err(UNINITIALIZED);
    }
    let i = (h as usize).checked_sub(1).ok_or(INVALID_ARGUMENT)?;
    rig().nvml_order().get(i).copied().ok_or(INVALID_ARGUMENT)
}

fn ret(r: Result<(), Ret>) -> Ret {
    r.err().unwrap_or(SUCCESS)
}

unsafe fn out_str(dst: *mut c_char, len: c_uint, s: &str) -> Result<(), Ret> {
    if write_cstr(dst, len as usize, s) {
        Ok(())
    } else {
        Err(INSUFFICIENT_SIZE)
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlInit_v2() -> Ret {
    match rig().faults.nvml_init.as_deref() {
        Some("mismatch") => return LIB_RM_VERSION_MISMATCH,
        Some("driver-not-loaded") => return DRIVER_NOT_LOADED,
        Some("hang") => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        _ => {}
    }
    INITIALISED.store(true, Ordering::SeqCst);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlShutdown() -> Ret {
    INITIALISED.store(false, Ordering::SeqCst);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlErrorString(r: Ret) -> *const c_char {
    let s: &'static [u8] = match r {
        SUCCESS => b"Success\0",
        UNINITIALIZED => b"Uninitialized\0",
        INVALID_ARGUMENT => b"Invalid Argument\0",
        NOT_SUPPORTED => b"Not Supported\0",
        INSUFFICIENT_SIZE => b"Insufficient Size\0",
        DRIVER_NOT_LOADED => b"Driver Not Loaded\0",
        LIB_RM_VERSION_MISMATCH => b"Driver/library version mismatch\0",
        _ => b"Unknown Error\0",
    };
    s.as_ptr() as *const c_char
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(v: *mut c_char, len: c_uint) -> Ret {
    ret(out_str(v, len, &rig().driver_version))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(v: *mut i32) -> Ret {
    *v = rig().cuda_version;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(n: *mut c_uint) -> Ret {
    if !INITIALISED.load(Ordering::SeqCst) {
        return UNINITIALIZED;
    }
    *n = rig().gpus.len() as c_uint;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(i: c_uint, h: *mut *mut c_void) -> Ret {
    let handle = (i as usize + 1) as *mut c_void;
    ret(device(handle).map(|_| *h = handle))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(h: *mut c_void, v: *mut c_char, len: c_uint) -> Ret {
    ret(device(h).and_then(|g| out_str(v, len, &g.name)))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(h: *mut c_void, v: *mut c_char, len: c_uint) -> Ret {
    ret(device(h).and_then(|g| out_str(v, len, &g.uuid)))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(h: *mut c_void, p: *mut PciInfo) -> Ret {
    ret(device(h).map(|g| fill_pci(g, &mut *p)))
}

fn fill_pci(g: &crate::rig::Gpu, p: &mut PciInfo) {
    let mut f = g
        .bus_id
        .split([':', '.'])
        .map(|x| u32::from_str_radix(x, 16).unwrap_or(0));
    let (domain, bus, dev) = (
        f.next().unwrap_or(0),
        f.next().unwrap_or(0),
        f.next().unwrap_or(0),
    );
    p.domain = domain;
    p.bus = bus;
    p.device = dev;
    p.pci_device_id = 0x220410de;
    p.pci_sub_system_id = 0;
    // NVML writes an 8-digit domain, upper case: "00000000:0A:00.0".
    let id = format!("{domain:08X}:{bus:02X}:{dev:02X}.0");
    // SAFETY: both buffers are as long as passed.
    unsafe {
        write_cstr(p.bus_id.as_mut_ptr(), 32, &id);
        write_cstr(
            p.bus_id_legacy.as_mut_ptr(),
            16,
            &format!("{domain:04X}:{bus:02X}:{dev:02X}.0"),
        );
    }
}

/// Index into the rig's `gpus` of an NVML handle.
fn gpu_of(h: *mut c_void) -> Result<usize, Ret> {
    device(h)?;
    rig().nvml_index(h as usize - 1).ok_or(INVALID_ARGUMENT)
}

const P2P_READ: c_uint = 0;
const P2P_WRITE: c_uint = 1;
const P2P_NVLINK: c_uint = 2;
const P2P_ATOMICS: c_uint = 3;
const P2P_PROP: c_uint = 4;

fn status_code(s: &str) -> c_uint {
    match s {
        "OK" => 0,
        "CNS" => 1,
        "GNS" => 2,
        "TNS" => 3,
        "DR" => 4,
        "NS" => 5,
        _ => 6,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetP2PStatus(
    h1: *mut c_void,
    h2: *mut c_void,
    index: c_uint,
    status: *mut c_uint,
) -> Ret {
    ret((|| {
        let (x, y) = (gpu_of(h1)?, gpu_of(h2)?);
        let r = rig();
        let access = r.pair(x, y).filter(|p| p.access);
        let nvlink = r.link(x, y).is_some_and(|p| p.nvlinks > p.nvlinks_down);
        let refused = r
            .pair(x, y)
            .and_then(|p| p.nvml_status.as_deref())
            .unwrap_or("NS");
        *status = match index {
            P2P_READ | P2P_WRITE | P2P_PROP if access.is_some() => 0,
            P2P_READ | P2P_WRITE | P2P_PROP => status_code(refused),
            P2P_NVLINK | P2P_ATOMICS if nvlink => 0,
            P2P_NVLINK | P2P_ATOMICS => status_code("NS"),
            _ => return Err(INVALID_ARGUMENT),
        };
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTopologyCommonAncestor(
    h1: *mut c_void,
    h2: *mut c_void,
    level: *mut c_uint,
) -> Ret {
    ret((|| {
        let (x, y) = (gpu_of(h1)?, gpu_of(h2)?);
        let topo = rig().link(x, y).map_or("PHB", |p| p.topology.as_str());
        *level = match topo {
            _ if x == y => 0,
            "PIX" => 10,
            "PXB" => 20,
            "PHB" => 30,
            "NODE" => 40,
            _ => 50,
        };
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    h: *mut c_void,
    link: c_uint,
    active: *mut c_uint,
) -> Ret {
    ret((|| {
        let links = rig().nvlinks(gpu_of(h)?);
        if links.is_empty() {
            return Err(NOT_SUPPORTED);
        }
        let (_, up) = links.get(link as usize).ok_or(INVALID_ARGUMENT)?;
        *active = c_uint::from(*up);
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkRemotePciInfo_v2(
    h: *mut c_void,
    link: c_uint,
    p: *mut PciInfo,
) -> Ret {
    ret((|| {
        let links = rig().nvlinks(gpu_of(h)?);
        if links.is_empty() {
            return Err(NOT_SUPPORTED);
        }
        let (peer, _) = links.get(link as usize).ok_or(INVALID_ARGUMENT)?;
        fill_pci(&rig().gpus[*peer], &mut *p);
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(h: *mut c_void, m: *mut MemoryV2) -> Ret {
    ret(device(h).map(|g| {
        let m = &mut *m;
        m.total = g.memory_mib << 20;
        m.reserved = 0;
        m.used = 0;
        m.free = m.total;
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBrand(h: *mut c_void, b: *mut c_uint) -> Ret {
    ret(device(h).map(|g| {
        *b = match g.brand.as_str() {
            "geforce" => 5,
            "titan" => 6,
            "quadro" => 1,
            "tesla" | "datacenter" => 2,
            "nvidia-rtx" => 13,
            _ => 0,
        }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBAR1MemoryInfo(h: *mut c_void, b: *mut Bar1) -> Ret {
    ret(device(h).map(|g| {
        let b = &mut *b;
        b.total = g.bar1_mib << 20;
        b.used = 0;
        b.free = b.total;
    }))
}

macro_rules! uint_getter {
    ($name:ident, $field:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(h: *mut c_void, v: *mut c_uint) -> Ret {
            ret(device(h).map(|g| *v = $field(g)))
        }
    };
}

/// Rig index of a GPU (NVML hands out references into the rig).
fn index_of(g: &crate::rig::Gpu) -> usize {
    rig()
        .gpus
        .iter()
        .position(|x| std::ptr::eq(x, g))
        .unwrap_or(usize::MAX)
}

/// The link as NVML reads it now: trained up while copies run, down at idle.
fn link_now(g: &crate::rig::Gpu) -> (u32, u32) {
    if crate::stream::busy(index_of(g)) {
        g.load_link()
    } else {
        (g.pcie.gen, g.pcie.width)
    }
}

uint_getter!(nvmlDeviceGetCurrPcieLinkGeneration, |g| link_now(g).0);
uint_getter!(nvmlDeviceGetCurrPcieLinkWidth, |g| link_now(g).1);
uint_getter!(nvmlDeviceGetPcieReplayCounter, |g| {
    crate::stream::replays(index_of(g)) as u32
});

/// Throttle reasons: GPU idle (0x1) at rest, the rig's bits while copies run.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCurrentClocksThrottleReasons(
    h: *mut c_void,
    v: *mut c_ulonglong,
) -> Ret {
    ret(device(h).map(|g| {
        *v = if crate::stream::busy(index_of(g)) {
            g.throttle_under_load
        } else {
            1
        }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus: *const c_char,
    h: *mut *mut c_void,
) -> Ret {
    if !INITIALISED.load(Ordering::SeqCst) {
        return UNINITIALIZED;
    }
    if bus.is_null() {
        return INVALID_ARGUMENT;
    }
    let want = std::ffi::CStr::from_ptr(bus)
        .to_string_lossy()
        .to_ascii_lowercase();
    let tail = |s: &str| {
        s.rsplit_once(':').map(|(a, b)| {
            (
                a.rsplit(':').next().unwrap_or("").to_string(),
                b.to_string(),
            )
        })
    };
    let found = rig()
        .nvml_order()
        .iter()
        .position(|g| tail(&g.bus_id.to_ascii_lowercase()) == tail(&want));
    match found {
        Some(i) => {
            *h = (i + 1) as *mut c_void;
            SUCCESS
        }
        None => NOT_FOUND,
    }
}
uint_getter!(nvmlDeviceGetMaxPcieLinkGeneration, |g: &crate::rig::Gpu| g
    .pcie
    .max_gen);
uint_getter!(nvmlDeviceGetMaxPcieLinkWidth, |g: &crate::rig::Gpu| g
    .pcie
    .max_width);
uint_getter!(nvmlDeviceGetPowerManagementLimit, |g: &crate::rig::Gpu| g
    .power_limit_w
    * 1000);
uint_getter!(nvmlDeviceGetEnforcedPowerLimit, |g: &crate::rig::Gpu| g
    .power_limit_w
    * 1000);
uint_getter!(
    nvmlDeviceGetPowerManagementDefaultLimit,
    |g: &crate::rig::Gpu| g.power_default_w.unwrap_or(g.power_limit_w) * 1000
);
uint_getter!(nvmlDeviceGetPowerUsage, |g: &crate::rig::Gpu| g
    .power_now_mw(crate::stream::busy(index_of(g))));

/// nvmlDeviceGetPowerManagementLimitConstraints(device, *min, *max), in milliwatts.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPowerManagementLimitConstraints(
    h: *mut c_void,
    min: *mut c_uint,
    max: *mut c_uint,
) -> Ret {
    if min.is_null() || max.is_null() {
        return INVALID_ARGUMENT;
    }
    ret(device(h).map(|g| {
        *min = g.power_min_w.unwrap_or(g.power_limit_w * 2 / 7) * 1000;
        *max = g.power_max_w.unwrap_or(g.power_limit_w) * 1000;
    }))
}
uint_getter!(nvmlDeviceGetPersistenceMode, |g: &crate::rig::Gpu| {
    u32::from(g.persistence)
});
// nvml.h: nvmlDeviceGetDisplayActive(device, nvmlEnableState_t *isActive), an enum of
// NVML_FEATURE_DISABLED = 0 / NVML_FEATURE_ENABLED = 1.
uint_getter!(nvmlDeviceGetDisplayActive, |g: &crate::rig::Gpu| {
    u32::from(g.display_active)
});

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    h: *mut c_void,
    _sensor: c_uint,
    t: *mut c_uint,
) -> Ret {
    ret(device(h).map(|g| *t = g.temperature_c))
}
