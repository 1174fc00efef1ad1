//! rigdoctor: diagnose multi-GPU Linux rigs.
//!
//! probes (read the machine) -> [`facts::Facts`] -> [`rules`] + [`knowledge`] -> findings -> [`report`].

pub mod allow;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod code;
pub mod expect;
pub mod facts;
pub mod finding;
pub mod fleet;
pub mod knowledge;
pub mod measure;
pub mod output;
pub mod probe;
pub mod progress;
pub mod report;
pub mod rules;
pub mod sysroot;
pub mod worker;
