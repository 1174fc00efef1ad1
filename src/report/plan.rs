//! "What to do": one numbered list of actions built from every warning and error, so a fix is
//! said once however many findings it answers. Findings arrive worst first and each lists its
//! fixes most likely first (the rules rank causes by what the run and the knowledge base show),
//! so the plan's order is the first place each action appears. Notes keep their own hints.

use crate::finding::{Finding, Severity};
use serde::{Deserialize, Serialize};

/// One action and the findings it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub action: String,
    /// Finding ids, in the order they were reported.
    pub findings: Vec<String>,
}

/// What makes two fix texts the same action: the commands in backticks, else the environment
/// assignments (NCCL_P2P_DISABLE=1), else the text from the first `sudo`, else the whole text.
/// Shared boilerplate such as "then: sudo update-grub && sudo reboot" is never the key when a
/// backticked parameter names what differs.
fn keys(fix: &str) -> Vec<String> {
    let ticked: Vec<String> = fix
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if !ticked.is_empty() {
        return ticked;
    }
    let assignments: Vec<String> = fix
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '(' || c == ')')
        .filter(|w| {
            w.split_once('=').is_some_and(|(k, v)| {
                !k.is_empty()
                    && !v.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            })
        })
        .map(str::to_string)
        .collect();
    if !assignments.is_empty() {
        return assignments;
    }
    match fix.find("sudo ") {
        Some(i) => vec![fix[i..].to_string()],
        None => vec![fix.to_string()],
    }
}

/// A fix that sends the reader to another finding's fixes (p2p-hang's "ACS redirects between
/// them" to acs-redirect's commands). In the plan it adds no step of its own: the finding is
/// named on the other finding's steps instead, when that finding is in the plan.
pub fn fixes_of(id: &str) -> String {
    format!("{FIXES_OF}{id}")
}

const FIXES_OF: &str = "apply the fixes of ";

/// The plan for `findings` (worst first): each action once, naming the findings it answers.
pub fn plan(findings: &[Finding]) -> Vec<Step> {
    let planned: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity >= Severity::Warn)
        .collect();
    let mut steps: Vec<(Step, Vec<String>)> = Vec::new();
    let mut deferred: Vec<(&str, &str)> = Vec::new();
    for f in &planned {
        for fix in &f.fix {
            if let Some(other) = fix.strip_prefix(FIXES_OF) {
                if planned.iter().any(|o| o.id == other && !o.fix.is_empty()) {
                    deferred.push((f.id.as_str(), other));
                    continue;
                }
            }
            let k = keys(fix);
            match steps
                .iter_mut()
                .find(|(s, sk)| s.action == *fix || sk.iter().any(|x| k.contains(x)))
            {
                Some((s, _)) => {
                    if !s.findings.contains(&f.id) {
                        s.findings.push(f.id.clone());
                    }
                }
                None => steps.push((
                    Step {
                        action: fix.clone(),
                        findings: vec![f.id.clone()],
                    },
                    k,
                )),
            }
        }
    }
    for (id, other) in deferred {
        for (s, _) in steps.iter_mut() {
            if s.findings.iter().any(|x| x == other) && !s.findings.iter().any(|x| x == id) {
                s.findings.push(id.to_string());
            }
        }
    }
    steps.into_iter().map(|(s, _)| s).collect()
}

/// The plan steps (1-based) that answer `f`.
pub fn steps_of(plan: &[Step], f: &Finding) -> Vec<usize> {
    plan.iter()
        .enumerate()
        .filter(|(_, s)| s.findings.contains(&f.id))
        .map(|(i, _)| i + 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(id: &str, sev: Severity, fixes: &[&str]) -> Finding {
        let code = crate::code::Code::from_id(id).unwrap();
        let mut f = Finding::new(code, sev, "t");
        for x in fixes {
            f = f.fix(*x);
        }
        f
    }

    #[test]
    fn each_action_once_in_first_seen_order() {
        let fs = [
            finding(
                "driver-known-bad",
                Severity::Error,
                &[
                    "install the 535 branch: sudo apt install nvidia-driver-535 && sudo reboot",
                    "until then, as a workaround (slower): export NCCL_P2P_DISABLE=1",
                ],
            ),
            finding(
                "p2p-hang",
                Severity::Error,
                &[
                    "install the 535 branch: sudo apt install nvidia-driver-535 && sudo reboot",
                    "add `iommu=pt` to GRUB_CMDLINE_LINUX_DEFAULT, then: sudo update-grub && sudo reboot",
                    "workaround: run with NCCL_P2P_DISABLE=1 (slower)",
                ],
            ),
            finding(
                "acs-redirect",
                Severity::Warn,
                &["add `pcie_acs_override=downstream` to GRUB_CMDLINE_LINUX_DEFAULT, then: sudo update-grub && sudo reboot"],
            ),
            finding("virtual-machine", Severity::Info, &["run it on the host"]),
        ];
        let p = plan(&fs);
        let actions: Vec<&str> = p.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(p.len(), 4, "{actions:#?}");
        assert!(p[0].action.contains("535") && p[0].findings == ["driver-known-bad", "p2p-hang"]);
        assert!(p[1].action.contains("NCCL_P2P_DISABLE") && p[1].findings.len() == 2);
        assert!(p[2].action.contains("iommu=pt"));
        // Same reboot boilerplate, another parameter: another action.
        assert!(p[3].action.contains("pcie_acs_override"));
        // Notes keep their own hints.
        assert!(!actions.iter().any(|a| a.contains("host")));
        assert_eq!(steps_of(&p, &fs[1]), [1, 2, 3]);
    }

    #[test]
    fn a_pointer_to_another_findings_fixes_names_it_on_those_steps() {
        let acs = finding("acs-redirect", Severity::Warn, &["disable ACS in the BIOS"]);
        let hang = finding(
            "p2p-hang",
            Severity::Error,
            &["install the 535 branch", &fixes_of("acs-redirect")],
        );
        let p = plan(&[hang.clone(), acs.clone()]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[1].findings, ["acs-redirect", "p2p-hang"]);
        assert_eq!(steps_of(&p, &hang), [1, 2]);
        // Without acs-redirect in the report, the pointer is said as it is.
        let p = plan(&[hang]);
        assert_eq!(p.len(), 2);
        assert!(p[1].action.contains("acs-redirect"));
    }
}
