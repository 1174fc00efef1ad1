//! Probes read the machine into [`Facts`]. They never judge: that is the rules' job.

mod config_space;
mod driver;
mod env;
pub mod gpu;
mod host;
mod kernel_log;
pub mod pci;

pub use config_space::decode_bridge_config;

use crate::facts::{Collected, Facts};
use crate::sysroot::Sysroot;

/// Read everything that can be read without touching a GPU.
///
/// `env` is the process environment to inspect (passed in so tests and callers control it).
pub fn collect_host(root: &Sysroot, env: impl IntoIterator<Item = (String, String)>) -> Facts {
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let env: Vec<(String, String)> = env.into_iter().collect();
    let driver = driver::probe(root);
    Facts {
        collected: Collected {
            sysroot: root.root().display().to_string(),
            unix_time,
            interrupted: None,
            skipped: Vec::new(),
        },
        host: host::probe(root),
        pci: pci::probe(root, &driver),
        env: env::probe(root, &env),
        driver,
        gpu: None,
    }
}
