//! The rig description the fake driver emulates.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rig {
    /// e.g. "545.29.06"; what NVML reports for the user-space library.
    #[serde(default = "default_driver")]
    pub driver_version: String,
    /// cuDriverGetVersion, e.g. 12030.
    #[serde(default = "default_cuda")]
    pub cuda_version: i32,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// The order CUDA enumerates the GPUs in (indices into `gpus`); default: as listed.
    pub cuda_order: Option<Vec<usize>>,
    /// Faults of the whole driver.
    #[serde(default)]
    pub faults: Faults,
}

fn default_driver() -> String {
    "550.54.14".into()
}
fn default_cuda() -> i32 {
    12040
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// cuInit: "hang" (never returns), "stub" (CUDA_ERROR_STUB_LIBRARY),
    /// "no-device" (CUDA_ERROR_NO_DEVICE), "mismatch" (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH).
    pub cuda_init: Option<String>,
    /// nvmlInit: "mismatch" (NVML_ERROR_LIB_RM_VERSION_MISMATCH), "driver-not-loaded", "hang".
    pub nvml_init: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub name: String,
    pub bus_id: String,
    pub uuid: String,
    pub memory_mib: u64,
    pub cc: [i32; 2],
    #[serde(default = "default_brand")]
    pub brand: String,
    pub pcie: Pcie,
    #[serde(default = "default_bar1")]
    pub bar1_mib: u64,
    #[serde(default = "default_power")]
    pub power_limit_w: u32,
    #[serde(default = "default_temp")]
    pub temperature_c: u32,
    #[serde(default)]
    pub persistence: bool,
    #[serde(default = "default_sms")]
    pub sms: i32,
}

fn default_brand() -> String {
    "geforce".into()
}
fn default_bar1() -> u64 {
    256
}
fn default_power() -> u32 {
    350
}
fn default_temp() -> u32 {
    40
}
fn default_sms() -> i32 {
    82
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pcie {
    pub gen: u32,
    pub width: u32,
    pub max_gen: u32,
    pub max_width: u32,
}

impl Rig {
    pub fn from_env() -> Result<Rig, String> {
        let path =
            std::env::var("FAKEGPU_RIG").map_err(|_| "FAKEGPU_RIG is not set".to_string())?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
    }

    /// The GPU behind CUDA ordinal `i`.
    pub fn cuda_gpu(&self, i: usize) -> Option<&Gpu> {
        match &self.cuda_order {
            Some(order) => order.get(i).and_then(|&g| self.gpus.get(g)),
            None => self.gpus.get(i),
        }
    }

    /// NVML enumerates in PCI bus order, as the real library does.
    pub fn nvml_order(&self) -> Vec<&Gpu> {
        let mut g: Vec<&Gpu> = self.gpus.iter().collect();
        g.sort_by(|a, b| {
            a.bus_id
                .to_ascii_lowercase()
                .cmp(&b.bus_id.to_ascii_lowercase())
        });
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_format_parses_and_orders() {
        let r: Rig = serde_json::from_str(
            r#"{"driver_version":"545.29.06","cuda_version":12030,"cuda_order":[1,0],"gpus":[
            {"name":"NVIDIA GeForce RTX 3090","bus_id":"0000:41:00.0","uuid":"GPU-a","memory_mib":24576,"cc":[8,6],
             "pcie":{"gen":4,"width":16,"max_gen":4,"max_width":16}},
            {"name":"NVIDIA GeForce RTX 3090","bus_id":"0000:0A:00.0","uuid":"GPU-b","memory_mib":24576,"cc":[8,6],
             "pcie":{"gen":4,"width":16,"max_gen":4,"max_width":16}}]}"#,
        )
        .unwrap();
        assert_eq!(r.cuda_gpu(0).unwrap().uuid, "GPU-b");
        assert_eq!(r.nvml_order()[0].uuid, "GPU-b");
        assert!(serde_json::from_str::<Rig>(r#"{"gpus":[],"bogus":1}"#).is_err());
    }
}
