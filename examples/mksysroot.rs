//! Build a fake sysroot from a rig description, to look at or to run rigdoctor on by hand:
//!
//!     cargo run --example mksysroot -- tests/rigs/x399-3x3090-r545.toml /tmp/x399
//!     cargo run -- check --sysroot /tmp/x399
//!
//! The builder is the one the tests use (tests/common/sysroot.rs); docs/testing.md has the format.

#[path = "../tests/common/sysroot.rs"]
mod sysroot;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, rig, out] = args.as_slice() else {
        eprintln!("usage: mksysroot RIG.toml OUT_DIR");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(rig).unwrap_or_else(|e| {
        eprintln!("{rig}: {e}");
        std::process::exit(2)
    });
    let rig: sysroot::Rig = toml::from_str(&text).unwrap_or_else(|e| {
        eprintln!("{rig}: {e}");
        std::process::exit(2)
    });
    let out = std::path::Path::new(out);
    if out.exists() {
        eprintln!("{}: already exists", out.display());
        std::process::exit(2);
    }
    sysroot::build(&rig, out);
    println!("{}: {}", out.display(), rig.description);
}
