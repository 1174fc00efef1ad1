//! NCCL and CUDA settings: the process environment and NCCL's configuration files.

use crate::facts::{EnvFacts, NcclConf, Probed};
use crate::sysroot::Sysroot;
use std::collections::BTreeMap;

/// Variable name prefixes that change how NCCL or CUDA behave.
const PREFIXES: [&str; 3] = ["NCCL_", "TORCH_NCCL_", "CUDA_"];

pub fn probe(root: &Sysroot, env: &[(String, String)]) -> EnvFacts {
    let vars: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| PREFIXES.iter().any(|p| k.starts_with(p)))
        .cloned()
        .collect();
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| v.clone());
    let mut paths = vec!["/etc/nccl.conf".to_string()];
    if let Some(h) = home {
        paths.push(format!("{}/.nccl.conf", h.trim_end_matches('/')));
    }
    let nccl_conf = paths
        .into_iter()
        .filter_map(|path| match root.read_string(&path) {
            Probed::Unknown {
                unknown: crate::facts::Why::Absent,
                ..
            } => None,
            read => Some(NcclConf {
                vars: read.map(|t| parse_conf(&t)),
                path,
            }),
        })
        .collect();
    EnvFacts { vars, nccl_conf }
}

/// NCCL reads `KEY=VALUE` lines; `#` starts a comment.
fn parse_conf(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_lines() {
        let m =
            parse_conf("# comment\nNCCL_P2P_DISABLE=1\n  NCCL_DEBUG = WARN # trailing\nbogus\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["NCCL_DEBUG"], "WARN");
    }
}
