//! The real NVIDIA user-space libraries, on a machine without a GPU or kernel module: the
//! driver's libcuda.so.1 and libnvidia-ml.so.1 (Debian bookworm's libcuda1 / libnvidia-ml1,
//! driver 535) and libnccl.so.2 of two releases (PyPI nvidia-nccl-cu12 2.18.3 and 2.32.3), as
//! fetched by `.ci/nvidia-libs.sh` into the directory named by RIGDOCTOR_REAL_LIBS. They keep the
//! fake driver honest: every symbol rigdoctor calls must exist in them, and rigdoctor must report
//! what they really answer (docs/testing.md, "Real NVIDIA libraries").
//!
//! Without RIGDOCTOR_REAL_LIBS each test prints that it skipped, except under CI (CI set), where
//! a missing cache is a failure: CI must never skip these silently.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The sysroot the GPU runs use: two 3090s, driver module 535 loaded (per the sysroot).
const RIG: &str = "x570-2x3090-r535";
/// A hard bound on any run here: a hang in a real library must fail the test, not CI.
const WALL: Duration = Duration::from_secs(90);

/// NCCL functions rigdoctor calls or is about to (error reporting, aborting a hung communicator,
/// multi-process init), checked in every real libnccl.
const NCCL_FUNCTIONS: [&str; 12] = [
    "ncclGetVersion",
    "ncclCommInitAll",
    "ncclAllReduce",
    "ncclGroupStart",
    "ncclGroupEnd",
    "ncclGetErrorString",
    "ncclGetLastError",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclCommGetAsyncError",
    "ncclGetUniqueId",
    "ncclCommInitRank",
];
const NCCL_VERSIONS: [&str; 2] = ["2.18.3", "2.32.3"];

/// The cache of `.ci/nvidia-libs.sh`, or None when this test is to be skipped.
fn real_libs(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("RIGDOCTOR_REAL_LIBS").filter(|d| !d.is_empty());
    let Some(dir) = dir else {
        let ci = std::env::var("CI").unwrap_or_default();
        if !ci.is_empty() && ci != "false" && ci != "0" {
            panic!(
                "CI={ci} but RIGDOCTOR_REAL_LIBS is unset: CI must test the real NVIDIA libraries; \
                 run eval \"$(.ci/nvidia-libs.sh)\" first (as .ci/run does)"
            );
        }
        println!(
            "real_libs::{test}: skipped (RIGDOCTOR_REAL_LIBS unset; eval \"$(.ci/nvidia-libs.sh)\" fetches the libraries)"
        );
        return None;
    };
    let dir = PathBuf::from(dir);
    let mut want = vec![
        dir.join("driver/libcuda.so.1"),
        dir.join("driver/libnvidia-ml.so.1"),
    ];
    want.extend(NCCL_VERSIONS.map(|v| dir.join(format!("nccl-{v}/libnccl.so.2"))));
    for f in want {
        assert!(
            f.is_file(),
            "RIGDOCTOR_REAL_LIBS={}: {} missing; run .ci/nvidia-libs.sh {0}",
            dir.display(),
            f.display()
        );
    }
    Some(dir)
}

// ---- which functions rigdoctor calls, read from its source ------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

/// Rust source as identifiers, string literal contents and punctuation; comments, numbers, char
/// literals and lifetimes dropped. Enough to tell code and strings from prose in comments.
fn lex(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"..", r#".."#, br#".."#.
        let raw_at = if ch == 'r' {
            Some(i + 1)
        } else if ch == 'b' && at(i + 1) == 'r' {
            Some(i + 2)
        } else {
            None
        };
        if let Some(mut j) = raw_at {
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) == '"' {
                let start = j + 1;
                let mut k = start;
                while k < c.len() && !(c[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#')) {
                    k += 1;
                }
                out.push(Tok::Str(c[start..k.min(c.len())].iter().collect()));
                i = k + 1 + hashes;
                continue;
            }
        }
        if ch == '"' || (ch == 'b' && at(i + 1) == '"') {
            i += if ch == 'b' { 2 } else { 1 };
            let mut s = String::new();
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    s.push(c[i]);
                    i += 1;
                }
                if i < c.len() {
                    s.push(c[i]);
                    i += 1;
                }
            }
            out.push(Tok::Str(s));
            i += 1;
            continue;
        }
        if ch == '\'' {
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1; // a lifetime: its name lexes as an identifier
            }
            continue;
        }
        if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
            continue;
        }
        if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            continue;
        }
        if !ch.is_whitespace() {
            out.push(Tok::Punct(ch));
        }
        i += 1;
    }
    out
}

/// `prefix` + an upper-case letter + identifier characters: how the NVIDIA C APIs name their
/// functions (cuInit, nvmlInit_v2, ncclGetVersion).
fn api_name(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.chars().next())
        .is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every word of `s` that is an API name with `prefix`.
fn api_names_in(s: &str, prefix: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| api_name(w, prefix))
        .map(String::from)
        .collect()
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

fn is_punct(t: Option<&Tok>, p: char) -> bool {
    t == Some(&Tok::Punct(p))
}

/// `a :: b` at `i`: the identifier after the path separator.
fn path_next(t: &[Tok], i: usize) -> Option<&str> {
    if is_punct(t.get(i), ':') && is_punct(t.get(i + 1), ':') {
        ident(t.get(i + 2))
    } else {
        None
    }
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// rigdoctor's own source files, lexed.
fn rigdoctor_source() -> Vec<(PathBuf, Vec<Tok>)> {
    let mut files = Vec::new();
    rs_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files.sort();
    assert!(files.len() > 10, "src/ not found: {files:?}");
    files
        .into_iter()
        .map(|f| {
            let toks = lex(&std::fs::read_to_string(&f).unwrap());
            (f, toks)
        })
        .collect()
}

/// The source directory of a dependency, from `cargo metadata` (offline: it is already built;
/// for this platform only, else cargo wants the Windows-only crates that were never downloaded).
fn crate_src(name: &str) -> PathBuf {
    static META: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let meta = META.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", "x86_64-unknown-linux-gnu"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    });
    let found: Vec<&Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{name} in cargo metadata: {found:?}");
    let manifest = PathBuf::from(found[0]["manifest_path"].as_str().unwrap());
    manifest.parent().unwrap().join("src")
}

/// What each function of a wrapper crate calls: `key -> (C symbols with prefix, functions called)`.
/// Keys are `mod::fn` (modules of the file), `impl::fn` for methods of impl blocks.
type CallMap = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

fn call_map(toks: &[Tok], prefix: &str, map: &mut CallMap) {
    let mut depth = 0usize;
    // (name, depth at which its block opened); "impl" for impl blocks.
    let mut scopes: Vec<(String, usize)> = Vec::new();
    let mut pending: Option<String> = None;
    let mut current: Option<String> = None;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct('{') => {
                depth += 1;
                if let Some(p) = pending.take() {
                    scopes.push((p, depth));
                }
            }
            Tok::Punct('}') => {
                if scopes.last().is_some_and(|(_, d)| *d == depth) {
                    scopes.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Punct(';') => pending = None,
            Tok::Ident(w) if w == "mod" => {
                if let Some(name) = ident(toks.get(i + 1)) {
                    pending = Some(name.to_string());
                }
            }
            Tok::Ident(w) if w == "impl" => pending = Some("impl".into()),
            Tok::Ident(w) if w == "fn" => {
                if let Some(name) = ident(toks.get(i + 1)) {
                    let mut path: Vec<&str> = scopes.iter().map(|(s, _)| s.as_str()).collect();
                    if path.contains(&"impl") {
                        path = vec!["impl"];
                    }
                    // A crate's own unit tests call its functions too, but not for rigdoctor.
                    if path.iter().any(|s| *s == "test" || *s == "tests") {
                        current = None;
                        continue;
                    }
                    path.push(name);
                    let key = path.join("::");
                    map.entry(key.clone()).or_default();
                    current = Some(key);
                }
            }
            Tok::Ident(w) => {
                let declared = ident(i.checked_sub(1).and_then(|p| toks.get(p))) == Some("fn");
                if let (Some(cur), false) = (&current, declared) {
                    let entry = map.get_mut(cur).unwrap();
                    // A C function is used as `sys::cuX(..)` or `lib.nvmlX`; C types (`_t`) and
                    // type annotations are not calls.
                    let prev = |k: usize| i.checked_sub(k).and_then(|p| toks.get(p));
                    let used =
                        is_punct(prev(1), '.') || is_punct(prev(1), ':') && is_punct(prev(2), ':');
                    if api_name(w, prefix) {
                        if used && !w.ends_with("_t") {
                            entry.0.insert(w.clone());
                        }
                    } else if is_punct(toks.get(i + 1), '(') {
                        entry.1.insert(w.clone());
                    }
                }
            }
            _ => {}
        }
    }
}

/// The C symbols reached from `roots` (keys of `map`), following calls to functions of the map
/// by their last path segment.
fn reach(map: &CallMap, roots: &BTreeSet<String>) -> BTreeSet<String> {
    let by_name = |n: &str| -> Vec<String> {
        map.keys()
            .filter(|k| k.rsplit("::").next() == Some(n))
            .cloned()
            .collect()
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = roots.iter().cloned().collect();
    let mut syms = BTreeSet::new();
    while let Some(k) = todo.pop() {
        if !seen.insert(k.clone()) {
            continue;
        }
        let Some((s, calls)) = map.get(&k) else {
            continue;
        };
        syms.extend(s.iter().cloned());
        for c in calls {
            todo.extend(by_name(c));
        }
    }
    syms
}

/// CUDA driver functions rigdoctor calls: `sys::cuX` (and any other cuX identifier in code),
/// cuX named in string literals (the symbol lists checked before cudarc is trusted, error
/// messages), and what the cudarc `result::` wrappers it calls call (read from cudarc's source).
fn cuda_symbols() -> BTreeSet<String> {
    let mut syms = BTreeSet::new();
    let mut in_strings = BTreeSet::new();
    let mut wrappers = BTreeSet::new();
    let mut methods = BTreeSet::new();
    for (_, t) in rigdoctor_source() {
        for (i, tok) in t.iter().enumerate() {
            match tok {
                Tok::Ident(w) if api_name(w, "cu") => {
                    syms.insert(w.clone());
                }
                Tok::Str(s) => in_strings.extend(api_names_in(s, "cu")),
                Tok::Ident(w) if w == "result" => {
                    if let Some(a) = path_next(&t, i + 1) {
                        match path_next(&t, i + 4) {
                            Some(b) => wrappers.insert(format!("{a}::{b}")),
                            None => wrappers.insert(a.to_string()),
                        };
                    }
                }
                Tok::Punct('.') => {
                    if let (Some(m), true) = (ident(t.get(i + 1)), is_punct(t.get(i + 2), '(')) {
                        methods.insert(format!("impl::{m}"));
                    }
                }
                _ => {}
            }
        }
    }
    // A name in a string is a driver function when cuda.h declares it (cudarc's bindings of it):
    // "cuModule" in `error.contains("cuModule")` is not one.
    let sys_rs = crate_src("cudarc").join("driver/sys/mod.rs");
    let declared: BTreeSet<String> = api_names_in(&std::fs::read_to_string(&sys_rs).unwrap(), "cu")
        .into_iter()
        .collect();
    assert!(
        declared.len() > 300,
        "{}: {} cu* names",
        sys_rs.display(),
        declared.len()
    );
    let (functions, prose): (BTreeSet<String>, BTreeSet<String>) =
        in_strings.into_iter().partition(|n| declared.contains(n));
    println!("cu* words in strings that cuda.h does not declare (prose): {prose:?}");
    syms.extend(functions);
    let result_rs = crate_src("cudarc").join("driver/result.rs");
    let mut map = CallMap::new();
    call_map(
        &lex(&std::fs::read_to_string(&result_rs).unwrap()),
        "cu",
        &mut map,
    );
    for w in &wrappers {
        assert!(
            map.contains_key(w),
            "rigdoctor calls cudarc result::{w}, not found in {}: the parser here needs updating",
            result_rs.display()
        );
    }
    // Methods of cudarc's impl blocks rigdoctor calls (DriverError::error_name ...).
    let methods: BTreeSet<String> = methods
        .intersection(&map.keys().cloned().collect())
        .cloned()
        .collect();
    let mut roots = wrappers;
    roots.extend(methods);
    syms.extend(reach(&map, &roots));
    syms
}

/// NVML functions rigdoctor reaches through nvml-wrapper: every function of the wrapper's
/// Nvml/Device/NvLink (src/{lib,device,nv_link}.rs) that a file using nvml_wrapper calls, and
/// what those call in turn.
fn nvml_symbols() -> BTreeSet<String> {
    let src = crate_src("nvml-wrapper");
    let mut map = CallMap::new();
    for f in ["lib.rs", "device.rs", "nv_link.rs"] {
        let toks = lex(&std::fs::read_to_string(src.join(f)).unwrap());
        call_map(&toks, "nvml", &mut map);
    }
    // Flatten: call sites name functions by their last segment.
    let mut roots = BTreeSet::new();
    for (_, t) in rigdoctor_source() {
        if !t.contains(&Tok::Ident("nvml_wrapper".into())) {
            continue;
        }
        for (i, tok) in t.iter().enumerate() {
            if let (Tok::Ident(w), true) = (tok, is_punct(t.get(i + 1), '(')) {
                roots.extend(
                    map.keys()
                        .filter(|k| k.rsplit("::").next() == Some(w.as_str()))
                        .cloned(),
                );
            }
        }
    }
    reach(&map, &roots)
}

/// NCCL functions: the list above and any ncclX rigdoctor's source names in code or strings
/// (not the ncclResult type its messages mention).
/// ncclResult_t's enumerators (nccl.h): rigdoctor's own table of them, plus the count.
fn nccl_results() -> Vec<&'static str> {
    let mut v = rigdoctor::worker::nccl::RESULT_NAMES.to_vec();
    v.push("ncclNumResults");
    v
}

fn nccl_symbols() -> BTreeSet<String> {
    let mut syms: BTreeSet<String> = NCCL_FUNCTIONS.iter().map(|s| s.to_string()).collect();
    for (_, t) in rigdoctor_source() {
        for tok in &t {
            let names = match tok {
                Tok::Ident(w) if api_name(w, "nccl") => vec![w.clone()],
                Tok::Str(s) => api_names_in(s, "nccl"),
                _ => vec![],
            };
            // ncclResult_t's enumerators (nccl.h) are names in rigdoctor's table, not functions.
            syms.extend(
                names.into_iter().filter(|n| {
                    !n.starts_with("ncclResult") && !nccl_results().contains(&n.as_str())
                }),
            );
        }
    }
    syms
}

/// The symbols of `wanted` that `lib` does not export.
fn missing(lib: &Path, wanted: &BTreeSet<String>) -> Vec<String> {
    // SAFETY: loading the library runs its initialisers, which need no GPU (nvidia-libs.sh loads
    // each the same way); symbols are only looked up, never called.
    let l = unsafe { libloading::Library::new(lib) }
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    wanted
        .iter()
        .filter(|s| unsafe { l.get::<unsafe extern "C" fn()>(s.as_bytes()) }.is_err())
        .cloned()
        .collect()
}

#[test]
fn lexer_tells_code_and_strings_from_comments() {
    let t = lex(
        "// cuNotThis()\n/* cuNorThis /* nested */ */ let x = sys::cuInit(0); \
         let s = r#\"cuRaw \"q\"\"#; let c = '\"'; let l: &'a str = \"cuStr\\\" and\";",
    );
    let idents: Vec<&str> = t.iter().filter_map(|x| ident(Some(x))).collect();
    assert!(idents.contains(&"cuInit"));
    assert!(!idents.iter().any(|i| i.starts_with("cuNo")));
    let strs: Vec<&Tok> = t.iter().filter(|x| matches!(x, Tok::Str(_))).collect();
    assert_eq!(
        strs,
        [
            &Tok::Str("cuRaw \"q\"".into()),
            &Tok::Str("cuStr\\\" and".into())
        ]
    );
    assert_eq!(
        api_names_in("(cuMemcpyPeerAsync, peer)", "cu"),
        ["cuMemcpyPeerAsync"]
    );
    assert!(api_names_in("cuda-unavailable CUDA_ERROR_X", "cu").is_empty());
}

#[test]
fn every_cuda_driver_function_rigdoctor_calls_is_in_the_real_libcuda() {
    let Some(dir) = real_libs("every_cuda_driver_function_rigdoctor_calls_is_in_the_real_libcuda")
    else {
        return;
    };
    let syms = cuda_symbols();
    println!("{} CUDA driver functions: {syms:?}", syms.len());
    // cuInit, the inventory, transfers, kernels, streams and events, error names.
    assert!(syms.len() >= 30, "only {} found: {syms:?}", syms.len());
    for s in [
        "cuInit",
        "cuGetErrorName",
        "cuMemcpyPeerAsync",
        "cuLaunchKernel",
    ] {
        assert!(syms.contains(s), "{s} not collected: {syms:?}");
    }
    let lib = dir.join("driver/libcuda.so.1");
    assert_eq!(
        missing(&lib, &syms),
        Vec::<String>::new(),
        "absent from {}",
        lib.display()
    );
}

#[test]
fn every_nvml_function_rigdoctor_calls_is_in_the_real_libnvidia_ml() {
    let Some(dir) = real_libs("every_nvml_function_rigdoctor_calls_is_in_the_real_libnvidia_ml")
    else {
        return;
    };
    let syms = nvml_symbols();
    println!("{} NVML functions: {syms:?}", syms.len());
    assert!(syms.len() >= 15, "only {} found: {syms:?}", syms.len());
    for s in [
        "nvmlInit_v2",
        "nvmlDeviceGetHandleByIndex_v2",
        "nvmlDeviceGetP2PStatus",
    ] {
        assert!(syms.contains(s), "{s} not collected: {syms:?}");
    }
    let lib = dir.join("driver/libnvidia-ml.so.1");
    assert_eq!(
        missing(&lib, &syms),
        Vec::<String>::new(),
        "absent from {}",
        lib.display()
    );
}

#[test]
fn every_nccl_function_rigdoctor_calls_is_in_both_real_libnccl() {
    let Some(dir) = real_libs("every_nccl_function_rigdoctor_calls_is_in_both_real_libnccl") else {
        return;
    };
    let syms = nccl_symbols();
    println!("{} NCCL functions: {syms:?}", syms.len());
    assert!(syms.len() >= NCCL_FUNCTIONS.len());
    for v in NCCL_VERSIONS {
        let lib = dir.join(format!("nccl-{v}/libnccl.so.2"));
        assert_eq!(
            missing(&lib, &syms),
            Vec::<String>::new(),
            "absent from NCCL {v}"
        );
    }
}

// ---- the real binary against the real libraries ------------------------------------------------

struct Out {
    code: i32,
    report: Value,
    text: String,
    stderr: String,
    took: Duration,
}

/// `rigdoctor ARGS --json --gpu --sysroot <RIG>` with this loader path, bounded by WALL; the
/// report re-rendered as text by `diagnose`.
fn run(args: &[&str], ld_path: &[&Path], env: &[(&str, &Path)]) -> Out {
    let root = sysroot_of(&load_rig(RIG));
    let ld = std::env::join_paths(ld_path).unwrap();
    let mut c = rigdoctor();
    c.args(args)
        .args(["--json", "--gpu", "--sysroot"])
        .arg(root.path())
        .env("LD_LIBRARY_PATH", &ld)
        .timeout(WALL);
    for (k, v) in env {
        c.env(k, v);
    }
    let t = Instant::now();
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("rigdoctor {args:?}: {e} (killed after {WALL:?}?)"));
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or_else(|| {
        panic!(
            "rigdoctor {args:?} ended by a signal after {took:?} (hang killed, or crash): {stderr}"
        )
    });
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    let file = root.path().join("report.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let text = rigdoctor()
        .args(["diagnose", "--color", "never"])
        .arg(&file)
        .output()
        .unwrap();
    Out {
        code,
        report,
        text: String::from_utf8_lossy(&text.stdout).into_owned(),
        stderr,
        took,
    }
}

/// A fact that is unknown: its detail.
fn unknown_detail(v: &Value) -> String {
    assert!(
        v.get("unknown").is_some(),
        "expected an unknown fact, got {v}"
    );
    v["detail"].as_str().unwrap_or_default().to_string()
}

/// What the real libcuda answers without a kernel module. Observed with 535.261.03 (as root and
/// as an unprivileged user): cuInit(0) returns CUDA_ERROR_NO_DEVICE (100, "no CUDA-capable device
/// is detected"), every time; cuDriverGetVersion works before cuInit (12020, CUDA 12.2).
fn assert_real_cuda_answer(r: &Out, dir: &Path) {
    let cuda = unknown_detail(&r.report["facts"]["gpu"]["cuda"]);
    assert!(cuda.contains("cuInit"), "{cuda}");
    assert!(cuda.contains("CUDA_ERROR_NO_DEVICE"), "{cuda}");
    assert!(!cuda.contains("STUB"), "{cuda}");
    // The library named is the real one (from the worker's memory map), when rigdoctor says.
    let real = dir.join("driver/libcuda.so.1");
    if cuda.contains('[') {
        assert!(cuda.contains(real.to_str().unwrap()), "{cuda}");
    }
    let f = text(findings(&r.report, "cuda-unavailable")[0]);
    assert!(f.contains("CUDA_ERROR_NO_DEVICE"), "{f}");
}

/// What the real NVML answers without a kernel module: nvmlInit_v2 (and nvmlInitWithFlags)
/// return NVML_ERROR_DRIVER_NOT_LOADED (9, nvmlErrorString "Driver Not Loaded"; nvml-wrapper
/// says "NVIDIA driver is not loaded").
fn assert_real_nvml_answer(r: &Out) {
    let nvml = unknown_detail(&r.report["facts"]["gpu"]["nvml"]);
    assert_eq!(r.report["facts"]["gpu"]["nvml"]["unknown"], "failed");
    assert!(nvml.to_lowercase().contains("not loaded"), "{nvml}");
    assert!(nvml.contains("nvmlInit"), "{nvml}");
    assert!(
        !findings(&r.report, "nvml-unavailable").is_empty(),
        "{}",
        r.text
    );
    assert!(r.text.contains("not loaded"), "{}", r.text);
}

/// The battery went on: host facts, and the CUDA steps marked not run rather than failed or hung.
fn assert_rest_ran(r: &Out) {
    let facts = &r.report["facts"];
    assert_eq!(facts["host"]["hostname"], "llm-box");
    assert_eq!(facts["driver"]["version"], "535.129.03");
    assert!(facts["pci"].is_object() || facts["pci"].is_array());
    let gpu = &facts["gpu"];
    for (step, runs) in [("p2p", "tests"), ("bandwidth", "measurements")] {
        let access = unknown_detail(&gpu[step]["access"]);
        assert!(access.contains("CUDA_ERROR_NO_DEVICE"), "{step}: {access}");
        assert_eq!(gpu[step][runs].as_array().map(Vec::len), Some(0), "{step}");
    }
    assert_eq!(
        gpu["nccl"]["library"]["unknown"], "not-run",
        "{}",
        gpu["nccl"]
    );
    let nccl = unknown_detail(&gpu["nccl"]["library"]);
    assert!(nccl.contains("CUDA is not usable"), "{nccl}");
    for id in ["nccl-error", "nccl-hang", "p2p-hang", "gpu-copy-failed"] {
        assert!(findings(&r.report, id).is_empty(), "{id}: {}", r.text);
    }
    // Findings and not a usage error; a few seconds, not a deadline.
    assert!(r.code == 0 || r.code == 1, "exit {}: {}", r.code, r.stderr);
    assert!(r.took < Duration::from_secs(30), "took {:?}", r.took);
}

#[test]
fn real_driver_without_a_kernel_module() {
    let Some(dir) = real_libs("real_driver_without_a_kernel_module") else {
        return;
    };
    // The whole battery (not --quick): inventory, P2P, bandwidth, NCCL.
    let r = run(&["check"], &[&dir.join("driver")], &[]);
    assert_real_cuda_answer(&r, &dir);
    assert_real_nvml_answer(&r);
    assert_rest_ran(&r);
}

#[test]
fn real_nvml_driver_not_loaded_is_reported_while_cuda_runs() {
    let Some(dir) = real_libs("real_nvml_driver_not_loaded_is_reported_while_cuda_runs") else {
        return;
    };
    // The fake libcuda.so.1 first (two healthy GPUs), the real libnvidia-ml.so.1 after it.
    let fake = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        fake_driver_dir().join("libcuda.so.1"),
        fake.path().join("libcuda.so.1"),
    )
    .unwrap();
    let rig = fake.path().join("rig.json");
    let gpus = [
        gpu("NVIDIA GeForce RTX 3090", "0000:0b:00.0", 6),
        gpu("NVIDIA GeForce RTX 3090", "0000:0c:00.0", 7),
    ];
    let fake_rig = json!({"driver_version": "535.129.03", "cuda_version": 12020, "gpus": gpus});
    std::fs::write(&rig, fake_rig.to_string()).unwrap();
    let r = run(
        &[
            "check",
            "--quick",
            "--nccl-lib",
            // There, but no library (a missing path is a usage error).
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ],
        &[fake.path(), &dir.join("driver")],
        &[("FAKEGPU_RIG", &rig)],
    );
    assert_real_nvml_answer(&r);
    let cuda = &r.report["facts"]["gpu"]["cuda"];
    assert_eq!(cuda["devices"].as_array().map_or(0, Vec::len), 2, "{cuda}");
    assert!(r.code == 0 || r.code == 1, "exit {}: {}", r.code, r.stderr);
}

#[test]
fn a_stub_libcuda_so_first_on_the_path_does_not_hide_the_real_driver() {
    let Some(dir) = real_libs("a_stub_libcuda_so_first_on_the_path_does_not_hide_the_real_driver")
    else {
        return;
    };
    // The CUDA toolkit's stubs directory holds libcuda.so (no .so.1): a library with the driver
    // API whose every call returns CUDA_ERROR_STUB_LIBRARY. The fake with its "stub" fault is one.
    let stubs = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        fake_driver_dir().join("libcuda.so.1"),
        stubs.path().join("libcuda.so"),
    )
    .unwrap();
    let rig = stubs.path().join("rig.json");
    std::fs::write(
        &rig,
        json!({"gpus": [], "faults": {"cuda_init": "stub"}}).to_string(),
    )
    .unwrap();
    let r = run(
        &["check", "--quick"],
        &[stubs.path(), &dir.join("driver")],
        &[("FAKEGPU_RIG", &rig)],
    );
    let cuda = text(&r.report["facts"]["gpu"]["cuda"]);
    assert!(
        !cuda.contains("STUB_LIBRARY") && !cuda.contains("not loadable"),
        "the stub libcuda.so hid the real libcuda.so.1: {cuda}"
    );
    assert_real_cuda_answer(&r, &dir);
    assert_real_nvml_answer(&r);
}

/// `rigdoctor nccl` with a real libnccl over the fake driver: NCCL's bundled CUDA runtime cannot
/// initialise on the fake libcuda and ncclCommInitAll fails. Observed with the fake of this tree
/// (which exports neither cuGetProcAddress nor cuGetExportTable), for 2.18.3 and 2.32.3 alike:
/// ncclCommInitAll returns 1 (ncclUnhandledCudaError, "unhandled cuda error (run with
/// NCCL_DEBUG=INFO for details)") and ncclGetLastError(NULL) answers
/// "Cuda failure 'API call is not supported in the installed CUDA driver'" (NCCL's CUDACHECK
/// WARN, src/include/checks.h: `WARN("Cuda failure '%s'", cudaGetErrorString(err))`, kept by
/// src/debug.cc as ncclLastError): the first CUDA runtime call fails, cudaGetDevice in
/// src/misc/cudawrap.cc initOnceFunc (2.32.3), cudaGetDeviceCount in ncclCommInitAll,
/// src/init.cc (2.18.3, which before that also fails to dlopen the driver as "libcuda.so", the
/// name it looks for, src/misc/cudawrap.cc).
fn nccl_over_the_fake(version: &str) {
    let Some(dir) = real_libs(&format!("nccl_over_the_fake_{version}")) else {
        return;
    };
    let lib = dir.join(format!("nccl-{version}/libnccl.so.2"));
    let rig = tempfile::tempdir().unwrap();
    let rig_file = rig.path().join("rig.json");
    let gpus = [
        gpu("NVIDIA GeForce RTX 3090", "0000:0b:00.0", 6),
        gpu("NVIDIA GeForce RTX 3090", "0000:0c:00.0", 7),
    ];
    let fake_rig = json!({"driver_version": "535.129.03", "cuda_version": 12020, "gpus": gpus});
    std::fs::write(&rig_file, fake_rig.to_string()).unwrap();
    let args = ["nccl", "--min-size", "1M", "--max-size", "4M", "--nccl-lib"];
    let mut args = args.to_vec();
    args.push(lib.to_str().unwrap());
    let r = run(&args, &[&fake_driver_dir()], &[("FAKEGPU_RIG", &rig_file)]);
    assert_eq!(r.code, 1, "{}\n{}", r.text, r.stderr);
    assert!(r.took < Duration::from_secs(30), "took {:?}", r.took);
    let nccl = &r.report["facts"]["gpu"]["nccl"];
    let failure = format!(
        "{nccl} {}",
        text(&Value::Array(
            findings(&r.report, "nccl-error")
                .into_iter()
                .cloned()
                .collect()
        ))
    );
    assert!(!findings(&r.report, "nccl-error").is_empty(), "{}", r.text);
    // The real version, from ncclGetVersion, kept although init failed (the path, which holds
    // the version too, taken out).
    let without_path = r
        .report
        .to_string()
        .replace(dir.to_str().unwrap(), "<cache>");
    assert!(
        without_path.contains(version),
        "NCCL's version {version} not in the report: {nccl}"
    );
    // NCCL's own cause (ncclGetLastError), not only ncclGetErrorString's generic text.
    assert!(failure.contains("ncclUnhandledCudaError"), "{failure}");
    assert!(
        failure.contains("Cuda failure '"),
        "ncclGetLastError's text missing: {failure}"
    );
}

#[test]
fn real_nccl_2_32_3_init_failure_names_its_cause() {
    nccl_over_the_fake("2.32.3");
}

#[test]
fn real_nccl_2_18_3_init_failure_names_its_cause() {
    nccl_over_the_fake("2.18.3");
}

/// The C functions the fake driver exports (`extern "C" fn NAME` in fakegpu/src), by prefix.
fn fake_exports(prefix: &str) -> BTreeSet<String> {
    let mut files = Vec::new();
    rs_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fakegpu/src"),
        &mut files,
    );
    let mut out = BTreeSet::new();
    for f in files {
        let t = lex(&std::fs::read_to_string(&f).unwrap());
        for w in t.windows(4) {
            if let [Tok::Ident(e), Tok::Str(abi), Tok::Ident(k), Tok::Ident(name)] = w {
                if e == "extern" && abi == "C" && k == "fn" && api_name(name, prefix) {
                    out.insert(name.clone());
                }
            }
        }
    }
    out
}

#[test]
fn the_fake_exports_only_functions_the_real_libraries_have() {
    let Some(dir) = real_libs("the_fake_exports_only_functions_the_real_libraries_have") else {
        return;
    };
    // A function the real library lacks would let rigdoctor pass against the fake and fail on a
    // real driver. (One newer than driver 535 would need a newer real library here.)
    let cuda = fake_exports("cu");
    let nvml = fake_exports("nvml");
    let nccl = fake_exports("nccl");
    println!("fake exports: {cuda:?} {nvml:?} {nccl:?}");
    assert!(cuda.len() >= 30 && nvml.len() >= 10 && nccl.len() >= 5);
    let mut absent = missing(&dir.join("driver/libcuda.so.1"), &cuda);
    absent.extend(missing(&dir.join("driver/libnvidia-ml.so.1"), &nvml));
    for v in NCCL_VERSIONS {
        let lib = dir.join(format!("nccl-{v}/libnccl.so.2"));
        absent.extend(
            missing(&lib, &nccl)
                .into_iter()
                .map(|s| format!("{s} (NCCL {v})")),
        );
    }
    assert_eq!(
        absent,
        Vec::<String>::new(),
        "the fake exports what the real libraries do not"
    );
}
