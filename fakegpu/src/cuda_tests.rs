//! The fake CUDA driver against cuda.h 12.9: each test calls the exported functions directly.
//! The driver's state belongs to its process (a sticky error ends it, as on a real GPU), so
//! every scenario runs in a fresh process: the test binary itself, filtered to that test, with
//! FAKEGPU_SCENARIO naming the case and FAKEGPU_RIG the rig.

use crate::cuda::*;
use crate::memory::*;
use crate::stream::*;
use serde_json::{json, Value};
use std::ffi::{c_char, c_void, CStr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `body` in a child process of this test binary (test `test`, case `case`) with `rig`.
fn isolated(test: &str, case: &str, rig: &Value, env: &[(&str, &str)], body: impl FnOnce()) {
    match std::env::var("FAKEGPU_SCENARIO") {
        Ok(c) if c == case => {
            body();
            return;
        }
        Ok(_) => return,
        Err(_) => {}
    }
    let file = std::env::temp_dir().join(format!("fakegpu-{}-{case}.json", std::process::id()));
    std::fs::write(&file, rig.to_string()).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        &format!("cuda_tests::{test}"),
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("FAKEGPU_SCENARIO", case)
    .env("FAKEGPU_RIG", &file)
    .env_remove("FAKEGPU_SPIN_SCALE")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&file);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "case {case}: {:?}\n{text}",
        out.status
    );
}

fn gpu(n: usize) -> Value {
    json!({"name": "NVIDIA GeForce RTX 3090", "bus_id": format!("0000:{:02x}:00.0", 0x41 + n),
           "uuid": format!("GPU-{n}"), "memory_mib": 24576, "cc": [8, 6],
           "pcie": {"gen": 4, "width": 16, "max_gen": 4, "max_width": 16}})
}

/// Two GPUs with peer access both ways and `fault` on the pair.
fn rig2(fault: &str) -> Value {
    json!({"gpus": [gpu(0), gpu(1)], "pairs": [{"a": 0, "b": 1, "fault": fault}]})
}

/// Three GPUs: 0<->1 granted, 2 has no peer access.
fn rig3() -> Value {
    json!({"gpus": [gpu(0), gpu(1), gpu(2)], "pairs": [{"a": 0, "b": 1}]})
}

fn ok(r: CUresult) {
    assert_eq!(r, SUCCESS, "{}", name(r));
}

fn name(r: CUresult) -> String {
    let mut p: *const c_char = std::ptr::null();
    // SAFETY: a valid out pointer.
    match unsafe { cuGetErrorName(r, &mut p) } {
        // SAFETY: a static NUL-terminated name.
        SUCCESS => unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
        _ => format!("code {r}"),
    }
}

fn ctx(dev: i32) -> *mut c_void {
    let mut c = std::ptr::null_mut();
    // SAFETY: valid out pointer.
    ok(unsafe { cuDevicePrimaryCtxRetain(&mut c, dev) });
    c
}

fn bind(dev: i32) -> *mut c_void {
    let c = ctx(dev);
    // SAFETY: a primary context.
    ok(unsafe { cuCtxSetCurrent(c) });
    c
}

fn init() {
    // SAFETY: flags 0.
    ok(unsafe { cuInit(0) });
}

fn alloc(len: usize) -> u64 {
    let mut p = 0;
    // SAFETY: valid out pointer.
    ok(unsafe { cuMemAlloc_v2(&mut p, len) });
    p
}

fn host_alloc(len: usize) -> *mut u8 {
    let mut p = std::ptr::null_mut();
    // SAFETY: valid out pointer; PORTABLE | DEVICEMAP.
    ok(unsafe { cuMemHostAlloc(&mut p, len, 0x3) });
    p as *mut u8
}

fn stream() -> *mut c_void {
    let mut s = std::ptr::null_mut();
    // SAFETY: valid out pointer; CU_STREAM_NON_BLOCKING.
    ok(unsafe { cuStreamCreate(&mut s, 1) });
    s
}

fn event() -> *mut c_void {
    let mut e = std::ptr::null_mut();
    // SAFETY: valid out pointer.
    ok(unsafe { cuEventCreate(&mut e, 0) });
    e
}

/// A kernel of kernels/ loaded into the current context.
fn kernel(ptx: &str, entry: &CStr) -> *mut c_void {
    let image = format!("{ptx}\0");
    let mut m = std::ptr::null_mut();
    let mut f = std::ptr::null_mut();
    // SAFETY: NUL-terminated PTX, valid out pointers.
    unsafe {
        ok(cuModuleLoadData(&mut m, image.as_ptr() as *const c_void));
        ok(cuModuleGetFunction(&mut f, m, entry.as_ptr()));
    }
    f
}

const COPY_PTX: &str = include_str!("../../kernels/copy.ptx");
const SPIN_PTX: &str = include_str!("../../kernels/spin.ptx");

/// Launch `f` with u64 arguments, `grid` x `block` threads (x only).
fn launch(f: *mut c_void, grid: u32, block: u32, s: *mut c_void, args: &[u64]) -> CUresult {
    let mut vals = args.to_vec();
    let mut params: Vec<*mut c_void> = vals
        .iter_mut()
        .map(|v| v as *mut u64 as *mut c_void)
        .collect();
    // SAFETY: one pointer per u64 argument, alive across the call.
    unsafe {
        cuLaunchKernel(
            f,
            grid,
            1,
            1,
            block,
            1,
            1,
            0,
            s,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
}

fn upload(dst: u64, data: &[u8]) {
    // SAFETY: dst holds data.len() bytes.
    ok(unsafe { cuMemcpyHtoD_v2(dst, data.as_ptr() as *const c_void, data.len()) });
}

fn download(src: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: src holds len bytes.
    ok(unsafe { cuMemcpyDtoH_v2(v.as_mut_ptr() as *mut c_void, src, len) });
    v
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn set_flag(p: *mut u8, v: u32) {
    // SAFETY: a 4-aligned word of pinned host memory.
    unsafe { std::ptr::write_volatile(p as *mut u32, v) };
}

/// A raw pointer that may cross threads (the tests' latch words).
#[derive(Clone, Copy)]
struct Shared(*mut u8);
// SAFETY: the memory outlives the threads using it; writes are volatile words.
unsafe impl Send for Shared {}

#[test]
fn current_context_is_per_thread_and_calls_need_one() {
    isolated(
        "current_context_is_per_thread_and_calls_need_one",
        "ctx",
        &rig3(),
        &[],
        || unsafe {
            // Before cuInit nothing works, cuCtxSetCurrent included.
            assert_eq!(cuCtxSetCurrent(std::ptr::null_mut()), 3);
            init();
            let c0 = bind(0);
            let buf = alloc(4096);
            // Another thread has no context until it binds one, and binding there leaves ours.
            let other = std::thread::spawn(|| {
                let mut p = 0;
                assert_eq!(cuMemAlloc_v2(&mut p, 64), INVALID_CONTEXT);
                let mut c = sentinel();
                ok(cuCtxGetCurrent(&mut c));
                assert!(c.is_null());
                bind(1);
                alloc(64)
            })
            .join()
            .unwrap();
            let mut c = std::ptr::null_mut();
            ok(cuCtxGetCurrent(&mut c));
            assert_eq!(c, c0);
            // cuCtxSetCurrent(NULL) unbinds (cuda.h: "CUDA_SUCCESS is returned").
            ok(cuCtxSetCurrent(std::ptr::null_mut()));
            ok(cuCtxGetCurrent(&mut c));
            assert!(c.is_null());
            let mut p = 0u64;
            let mut hp = std::ptr::null_mut();
            let mut h = std::ptr::null_mut();
            let word = [0u8; 4];
            assert_eq!(cuMemAlloc_v2(&mut p, 64), INVALID_CONTEXT);
            assert_eq!(cuMemHostAlloc(&mut hp, 64, 0), INVALID_CONTEXT);
            assert_eq!(cuMemsetD32_v2(buf, 0, 1), INVALID_CONTEXT);
            assert_eq!(
                cuMemcpyHtoD_v2(buf, word.as_ptr() as *const c_void, 4),
                INVALID_CONTEXT
            );
            assert_eq!(
                cuMemcpyDtoH_v2(word.as_ptr() as *mut c_void, buf, 4),
                INVALID_CONTEXT
            );
            assert_eq!(
                cuMemcpyPeerAsync(other, ctx(1), buf, c0, 64, std::ptr::null_mut()),
                INVALID_CONTEXT
            );
            assert_eq!(
                cuModuleLoadData(&mut h, format!("{COPY_PTX}\0").as_ptr() as *const c_void),
                INVALID_CONTEXT
            );
            assert_eq!(cuStreamCreate(&mut h, 0), INVALID_CONTEXT);
            assert_eq!(cuEventCreate(&mut h, 0), INVALID_CONTEXT);
            assert_eq!(cuCtxSynchronize(), INVALID_CONTEXT);
            assert_eq!(cuCtxEnablePeerAccess(ctx(1), 0), INVALID_CONTEXT);
            assert_eq!(cuCtxDisablePeerAccess(ctx(1)), INVALID_CONTEXT);
            // A function handle from when a context was current does not launch without one.
            bind(0);
            let f = kernel(COPY_PTX, c"copy_v4");
            ok(cuCtxSetCurrent(std::ptr::null_mut()));
            assert_eq!(
                launch(f, 1, 32, std::ptr::null_mut(), &[buf, buf, 1]),
                INVALID_CONTEXT
            );
            // Freeing goes by the pointer (unified addressing): no context needed, any context's.
            ok(cuMemFree_v2(buf));
            bind(2);
            ok(cuMemFree_v2(other));
        },
    );
}

fn sentinel() -> *mut c_void {
    std::ptr::dangling_mut::<c_void>()
}

#[test]
fn ctx_synchronize_waits_for_the_current_context_only() {
    let env = [("FAKEGPU_SPIN_SCALE", "1")];
    isolated(
        "ctx_synchronize_waits_for_the_current_context_only",
        "sync",
        &rig3(),
        &env,
        || unsafe {
            init();
            // GPU 1: a spin whose latch nobody releases (1 s), then a copy.
            bind(1);
            let latch = host_alloc(64);
            set_flag(latch, 0);
            let spin = kernel(SPIN_PTX, c"spin_wait");
            let (a, b) = (alloc(1 << 16), alloc(1 << 16));
            upload(a, &pattern(1 << 16));
            let s1 = stream();
            let done1 = event();
            ok(launch(spin, 1, 1, s1, &[latch as u64, 1_000_000_000]));
            ok(cuMemcpyPeerAsync(b, ctx(1), a, ctx(1), 1 << 16, s1));
            ok(cuEventRecord(done1, s1));
            // GPU 0 has work of its own; its synchronisation does not wait for GPU 1's spin.
            bind(0);
            let c = alloc(1 << 16);
            let s0 = stream();
            ok(cuMemsetD32_v2(c, 7, 1 << 14));
            let t = Instant::now();
            ok(cuCtxSynchronize());
            assert!(
                t.elapsed() < Duration::from_millis(600),
                "{:?}",
                t.elapsed()
            );
            assert_eq!(download(c, 4), 7u32.to_ne_bytes());
            let _ = s0;
            assert_eq!(cuEventQuery(done1), NOT_READY);
            // GPU 1's synchronisation waits for the spin's timeout, then the copy runs.
            bind(1);
            ok(cuCtxSynchronize());
            let waited = t.elapsed();
            assert!(waited >= Duration::from_millis(950), "{waited:?}");
            ok(cuEventQuery(done1));
            assert_eq!(download(b, 1 << 16), pattern(1 << 16));
        },
    );
}

#[test]
fn spin_wait_blocks_its_stream_until_released_or_timed_out() {
    let env = [("FAKEGPU_SPIN_SCALE", "0.5")];
    isolated(
        "spin_wait_blocks_its_stream_until_released_or_timed_out",
        "spin",
        &rig3(),
        &env,
        || unsafe {
            init();
            bind(0);
            let latch = host_alloc(64);
            let spin = kernel(SPIN_PTX, c"spin_wait");
            let len = 64 << 20;
            let (a, b) = (alloc(len), alloc(len));
            upload(a, &pattern(len));
            let s = stream();
            let (start, end) = (event(), event());
            // Released by the host after 150 ms: the stream waits for it, then the copies run and
            // the events time them by the rig's model (800 GB/s within a GPU, 1 us each).
            set_flag(latch, 0);
            ok(launch(spin, 1, 1, s, &[latch as u64, 2_000_000_000]));
            ok(cuEventRecord(start, s));
            for _ in 0..10 {
                ok(cuMemcpyPeerAsync(b, ctx(0), a, ctx(0), len, s));
            }
            ok(cuEventRecord(end, s));
            let t = Instant::now();
            let l = Shared(latch);
            let releaser = std::thread::spawn(move || {
                let l = l;
                std::thread::sleep(Duration::from_millis(150));
                set_flag(l.0, 1);
            });
            for _ in 0..3 {
                assert_eq!(cuEventQuery(end), NOT_READY);
            }
            let mut ms = 0f32;
            assert_eq!(cuEventElapsedTime(&mut ms, start, end), NOT_READY);
            ok(cuStreamSynchronize(s));
            let waited = t.elapsed();
            releaser.join().unwrap();
            assert!(waited >= Duration::from_millis(140), "{waited:?}");
            assert!(waited < Duration::from_millis(900), "{waited:?}");
            ok(cuEventQuery(end));
            ok(cuEventElapsedTime(&mut ms, start, end));
            let model = 10.0 * (1e-6 + len as f64 / 800e9) * 1e3;
            assert!(
                (f64::from(ms) - model).abs() < 1e-3,
                "{ms} ms, model {model}"
            );
            assert_eq!(download(b, len), pattern(len));
            // Never released: the stream waits out the timeout (1 s x 0.5 on the host), which the
            // GPU's clock counts in full.
            set_flag(latch, 0);
            ok(cuEventRecord(start, s));
            ok(launch(spin, 1, 1, s, &[latch as u64, 1_000_000_000]));
            ok(cuEventRecord(end, s));
            let t = Instant::now();
            ok(cuStreamSynchronize(s));
            let waited = t.elapsed();
            assert!(waited >= Duration::from_millis(450), "{waited:?}");
            assert!(waited < Duration::from_millis(1000), "{waited:?}");
            ok(cuEventElapsedTime(&mut ms, start, end));
            assert!((f64::from(ms) - 1000.0).abs() < 1e-3, "{ms}");
        },
    );
}

#[test]
fn a_free_waits_for_queued_work_that_uses_the_memory() {
    let env = [("FAKEGPU_SPIN_SCALE", "1")];
    isolated(
        "a_free_waits_for_queued_work_that_uses_the_memory",
        "free-wait",
        &rig3(),
        &env,
        || unsafe {
            init();
            bind(0);
            let latch = host_alloc(64);
            let spin = kernel(SPIN_PTX, c"spin_wait");
            let (a, b, other) = (alloc(4096), alloc(4096), alloc(4096));
            let s = stream();
            set_flag(latch, 0);
            ok(launch(spin, 1, 1, s, &[latch as u64, 1_000_000_000]));
            ok(cuMemcpyPeerAsync(b, ctx(0), a, ctx(0), 4096, s));
            // Memory the queue does not use frees at once.
            let t = Instant::now();
            ok(cuMemFree_v2(other));
            assert!(t.elapsed() < Duration::from_millis(500));
            // The copy's destination waits for the spin (the host releases it after 100 ms).
            let l = Shared(latch);
            std::thread::spawn(move || {
                let l = l;
                std::thread::sleep(Duration::from_millis(100));
                set_flag(l.0, 1);
            });
            ok(cuMemFree_v2(b));
            let waited = t.elapsed();
            assert!(waited >= Duration::from_millis(90), "{waited:?}");
            assert!(waited < Duration::from_millis(800), "{waited:?}");
            // Nobody releases it: the free of the latch itself waits out the spin's timeout.
            set_flag(latch, 0);
            ok(launch(spin, 1, 1, s, &[latch as u64, 1_000_000_000]));
            let t = Instant::now();
            ok(cuMemFreeHost(latch as *mut c_void));
            assert!(
                t.elapsed() >= Duration::from_millis(950),
                "{:?}",
                t.elapsed()
            );
            ok(cuStreamSynchronize(s));
        },
    );
}

#[test]
fn stream_destroy_returns_at_once_and_its_work_still_runs() {
    let env = [("FAKEGPU_SPIN_SCALE", "1")];
    isolated(
        "stream_destroy_returns_at_once_and_its_work_still_runs",
        "destroy",
        &rig3(),
        &env,
        || unsafe {
            init();
            bind(0);
            let latch = host_alloc(64);
            let spin = kernel(SPIN_PTX, c"spin_wait");
            let (a, b) = (alloc(4096), alloc(4096));
            upload(a, &pattern(4096));
            upload(b, &[0; 4096]);
            let s = stream();
            set_flag(latch, 0);
            ok(launch(spin, 1, 1, s, &[latch as u64, 1_000_000_000]));
            ok(cuMemcpyPeerAsync(b, ctx(0), a, ctx(0), 4096, s));
            let t = Instant::now();
            ok(cuStreamDestroy_v2(s));
            assert!(t.elapsed() < Duration::from_millis(500));
            // The handle is gone for the caller...
            assert_eq!(cuStreamSynchronize(s), INVALID_HANDLE);
            assert_eq!(cuStreamDestroy_v2(s), INVALID_HANDLE);
            // ...and the work is not: the context's synchronisation waits for it.
            ok(cuCtxSynchronize());
            assert!(
                t.elapsed() >= Duration::from_millis(950),
                "{:?}",
                t.elapsed()
            );
            assert_eq!(download(b, 4096), pattern(4096));
        },
    );
}

#[test]
fn modules_keep_their_functions_and_launches_are_checked() {
    isolated(
        "modules_keep_their_functions_and_launches_are_checked",
        "launch",
        &rig3(),
        &[],
        || unsafe {
            init();
            bind(0);
            let copy = format!("{COPY_PTX}\0");
            let spin = format!("{SPIN_PTX}\0");
            let (mut mc, mut ms) = (std::ptr::null_mut(), std::ptr::null_mut());
            ok(cuModuleLoadData(&mut mc, copy.as_ptr() as *const c_void));
            ok(cuModuleLoadData(&mut ms, spin.as_ptr() as *const c_void));
            let mut f = std::ptr::null_mut();
            // Each module has its own entries (cuda.h: the function "located in module hmod").
            assert_eq!(
                cuModuleGetFunction(&mut f, mc, c"spin_wait".as_ptr()),
                NOT_FOUND
            );
            assert_eq!(
                cuModuleGetFunction(&mut f, ms, c"copy_v4".as_ptr()),
                NOT_FOUND
            );
            assert_eq!(cuModuleGetFunction(&mut f, mc, c"copy".as_ptr()), NOT_FOUND);
            assert_eq!(
                cuModuleGetFunction(&mut f, 12345 as *mut c_void, c"copy_v4".as_ptr()),
                INVALID_HANDLE
            );
            ok(cuModuleGetFunction(&mut f, mc, c"copy_v4".as_ptr()));
            let mut again = std::ptr::null_mut();
            ok(cuModuleGetFunction(&mut again, mc, c"copy_v4".as_ptr()));
            assert_eq!(f, again);
            let len = 1 << 20;
            let (a, b) = (alloc(len), alloc(len));
            upload(a, &pattern(len));
            let n = (len / 16) as u64;
            let null = std::ptr::null_mut();
            // Dimensions: positive, at most 1024 threads a block, block z at most 64.
            assert_eq!(launch(f, 0, 256, null, &[b, a, n]), INVALID_VALUE);
            assert_eq!(launch(f, 1, 0, null, &[b, a, n]), INVALID_VALUE);
            assert_eq!(launch(f, 1, 1025, null, &[b, a, n]), INVALID_VALUE);
            let mut args = [b, a, n];
            let mut params: Vec<*mut c_void> = args
                .iter_mut()
                .map(|v| v as *mut u64 as *mut c_void)
                .collect();
            let none: *mut *mut c_void = std::ptr::null_mut();
            let dims = |g: [u32; 3], bl: [u32; 3], p: *mut *mut c_void, e: *mut *mut c_void| {
                cuLaunchKernel(f, g[0], g[1], g[2], bl[0], bl[1], bl[2], 0, null, p, e)
            };
            let pp = params.as_mut_ptr();
            assert_eq!(dims([1, 1, 1], [32, 32, 2], pp, none), INVALID_VALUE);
            assert_eq!(dims([1, 1, 1], [1, 1, 65], pp, none), INVALID_VALUE);
            assert_eq!(dims([1, 65536, 1], [32, 1, 1], pp, none), INVALID_VALUE);
            // Parameters: copy_v4 has three, so kernelParams is required; not with `extra` too.
            assert_eq!(dims([1, 1, 1], [32, 1, 1], none, none), INVALID_VALUE);
            let mut end = [std::ptr::null_mut::<c_void>()];
            assert_eq!(
                dims([1, 1, 1], [32, 1, 1], pp, end.as_mut_ptr()),
                INVALID_VALUE
            );
            // A valid launch runs the module's copy_v4 on the NULL stream.
            ok(dims([4, 1, 1], [16, 16, 4], pp, none));
            ok(cuCtxSynchronize());
            assert_eq!(download(b, len), pattern(len));
            // A kernel the fake does not emulate is refused, loudly.
            let other = ".version 7.0\n.target sm_52\n.address_size 64\n.visible .entry other(\n\t.param .u64 other_p\n)\n{\n\tret;\n}\n\0";
            let mut mo = std::ptr::null_mut();
            ok(cuModuleLoadData(&mut mo, other.as_ptr() as *const c_void));
            let mut fo = std::ptr::null_mut();
            ok(cuModuleGetFunction(&mut fo, mo, c"other".as_ptr()));
            assert_eq!(launch(fo, 1, 1, null, &[0]), NOT_SUPPORTED);
            // After cuModuleUnload its functions are invalid handles.
            ok(cuModuleUnload(mc));
            assert_eq!(launch(f, 1, 32, null, &[b, a, n]), INVALID_HANDLE);
            assert_eq!(cuModuleUnload(mc), INVALID_HANDLE);
            // Pointers copy_v4 cannot use fault when the kernel runs (sticky): misaligned.
            let g = kernel(COPY_PTX, c"copy_v4");
            ok(launch(g, 1, 32, null, &[b + 4, a, 1]));
            assert_eq!(cuCtxSynchronize(), MISALIGNED_ADDRESS);
            assert_eq!(cuMemAlloc_v2(&mut 0, 64), MISALIGNED_ADDRESS);
        },
    );
}

#[test]
fn ptx_entries_are_parsed_with_their_parameters() {
    let e = parse_entries(COPY_PTX).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].name.as_str(), e[0].params.clone()),
        ("copy_v4", vec![8, 8, 8])
    );
    let e = parse_entries(SPIN_PTX).unwrap();
    assert_eq!(
        (e[0].name.as_str(), e[0].params.clone()),
        ("spin_wait", vec![8, 8])
    );
    let two =
        "// .entry fake(\n.entry a(.param .u32 x, .param .align 8 .b8 y[24])\n{}\n.entry b\n{}";
    let e = parse_entries(two).unwrap();
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[0].params, vec![4, 24]);
    assert_eq!((e[1].name.as_str(), e[1].params.len()), ("b", 0));
}

#[test]
fn peer_access_follows_cuda_h() {
    isolated(
        "peer_access_follows_cuda_h",
        "peer",
        &rig3(),
        &[],
        || unsafe {
            init();
            bind(0);
            // The current context itself: CUDA_ERROR_INVALID_CONTEXT.
            assert_eq!(cuCtxEnablePeerAccess(ctx(0), 0), INVALID_CONTEXT);
            assert_eq!(
                cuCtxEnablePeerAccess(std::ptr::null_mut(), 0),
                INVALID_CONTEXT
            );
            assert_eq!(cuCtxEnablePeerAccess(ctx(1), 1), INVALID_VALUE);
            // Not granted by cuDeviceCanAccessPeer: unsupported.
            assert_eq!(cuCtxEnablePeerAccess(ctx(2), 0), PEER_ACCESS_UNSUPPORTED);
            assert_eq!(cuCtxDisablePeerAccess(ctx(1)), PEER_ACCESS_NOT_ENABLED);
            ok(cuCtxEnablePeerAccess(ctx(1), 0));
            assert_eq!(
                cuCtxEnablePeerAccess(ctx(1), 0),
                PEER_ACCESS_ALREADY_ENABLED
            );
            // Per context and one-way: GPU 1 has not enabled access to GPU 0.
            bind(1);
            assert_eq!(cuCtxDisablePeerAccess(ctx(0)), PEER_ACCESS_NOT_ENABLED);
            bind(0);
            ok(cuCtxDisablePeerAccess(ctx(1)));
            assert_eq!(cuCtxDisablePeerAccess(ctx(1)), PEER_ACCESS_NOT_ENABLED);
        },
    );
}

#[test]
fn frees_follow_cuda_h() {
    isolated("frees_follow_cuda_h", "free", &rig3(), &[], || unsafe {
        init();
        bind(0);
        let a = alloc(4096);
        let h = host_alloc(4096);
        // Device pointers come 256-byte aligned, pinned memory in pages.
        assert_eq!(a % 256, 0);
        assert_eq!(h as usize % 4096, 0);
        assert_eq!(cuMemFree_v2(0), INVALID_VALUE);
        assert_eq!(cuMemFree_v2(a + 16), INVALID_VALUE);
        assert_eq!(cuMemFree_v2(h as u64), INVALID_VALUE);
        assert_eq!(cuMemFreeHost(a as *mut c_void), INVALID_VALUE);
        ok(cuMemFree_v2(a));
        assert_eq!(cuMemFree_v2(a), INVALID_VALUE);
        ok(cuMemFreeHost(h as *mut c_void));
        assert_eq!(cuMemFreeHost(h as *mut c_void), INVALID_VALUE);
        // Another context's pointer: freed in its own context.
        bind(1);
        let b = alloc(4096);
        bind(0);
        ok(cuMemFree_v2(b));
        assert_eq!(cuMemAlloc_v2(&mut 0, 0), INVALID_VALUE);
        // More than the GPU has: out of memory.
        assert_eq!(cuMemAlloc_v2(&mut 0, 25 << 30), OUT_OF_MEMORY);
    });
}

#[test]
fn events_follow_cuda_h() {
    isolated("events_follow_cuda_h", "events", &rig3(), &[], || unsafe {
        init();
        bind(0);
        let (e, f) = (event(), event());
        // "Before the first call to cuEventRecord(), an event represents an empty set of work".
        ok(cuEventQuery(e));
        let mut ms = 0f32;
        assert_eq!(cuEventElapsedTime(&mut ms, e, f), INVALID_HANDLE);
        let s = stream();
        ok(cuEventRecord(e, s));
        ok(cuEventRecord(f, std::ptr::null_mut()));
        ok(cuCtxSynchronize());
        ok(cuEventQuery(e));
        ok(cuEventQuery(f));
        let mut untimed = std::ptr::null_mut();
        ok(cuEventCreate(&mut untimed, 0x2));
        ok(cuEventRecord(untimed, s));
        ok(cuStreamSynchronize(s));
        assert_eq!(cuEventElapsedTime(&mut ms, e, untimed), INVALID_HANDLE);
        // Event and stream of different contexts: CUDA_ERROR_INVALID_HANDLE.
        bind(1);
        let s1 = stream();
        assert_eq!(cuEventRecord(e, s1), INVALID_HANDLE);
        assert_eq!(cuEventRecord(12345 as *mut c_void, s1), INVALID_HANDLE);
        ok(cuEventDestroy_v2(e));
        assert_eq!(cuEventDestroy_v2(e), INVALID_HANDLE);
        assert_eq!(cuEventQuery(e), INVALID_HANDLE);
    });
}

/// cuGetErrorName / cuGetErrorString of `code`: (result, the string or None, whether the out
/// pointer was set to NULL).
fn describe(code: CUresult) -> Vec<(CUresult, Option<String>)> {
    [cuGetErrorName, cuGetErrorString]
        .into_iter()
        .map(|f| {
            let mut p: *const c_char = std::ptr::dangling::<c_char>();
            // SAFETY: a valid out pointer.
            let r = unsafe { f(code, &mut p) };
            // SAFETY: non-null answers are static NUL-terminated strings.
            let s =
                (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
            (r, s)
        })
        .collect()
}

#[test]
fn error_names_are_the_drivers_and_unknown_codes_fail() {
    isolated(
        "error_names_are_the_drivers_and_unknown_codes_fail",
        "names",
        &rig3(),
        &[],
        || {
            let named = |c: CUresult, n: &str, t: &str| {
                assert_eq!(
                    describe(c),
                    [
                        (SUCCESS, Some(n.to_string())),
                        (SUCCESS, Some(t.to_string()))
                    ]
                );
            };
            named(
                700,
                "CUDA_ERROR_ILLEGAL_ADDRESS",
                "an illegal memory access was encountered",
            );
            named(
                226,
                "CUDA_ERROR_CONTAINED",
                "Invalid access of peer GPU memory over nvlink or a hardware error",
            );
            named(
                721,
                "CUDA_ERROR_TENSOR_MEMORY_LEAK",
                "tensor memory not completely freed",
            );
            named(
                810,
                "CUDA_ERROR_MPS_CLIENT_TERMINATED",
                "the MPS client has been terminated by the server",
            );
            named(
                911,
                "CUDA_ERROR_EXTERNAL_DEVICE",
                "an async error has occured in external entity outside of CUDA",
            );
            named(0, "CUDA_SUCCESS", "no error");
            // Not recognised: CUDA_ERROR_INVALID_VALUE and *pStr set to NULL (cuda.h).
            for c in [36, 916, 9999, u32::MAX] {
                assert_eq!(
                    describe(c),
                    [(INVALID_VALUE, None), (INVALID_VALUE, None)],
                    "{c}"
                );
            }
            // SAFETY: a NULL out pointer is refused, not written.
            assert_eq!(
                unsafe { cuGetErrorName(0, std::ptr::null_mut()) },
                INVALID_VALUE
            );
        },
    );
    let cuda13 = json!({"cuda_version": 13000, "gpus": [gpu(0)]});
    isolated(
        "error_names_are_the_drivers_and_unknown_codes_fail",
        "names-13",
        &cuda13,
        &[],
        || {
            assert_eq!(
                describe(36)[0],
                (
                    SUCCESS,
                    Some("CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER".to_string())
                )
            );
        },
    );
}

/// Enable peer access both ways between GPU 0 and 1; buffers a (GPU 0, pattern) and b (GPU 1).
unsafe fn peers() -> (u64, u64) {
    init();
    bind(1);
    ok(cuCtxEnablePeerAccess(ctx(0), 0));
    let b = alloc(1 << 16);
    bind(0);
    ok(cuCtxEnablePeerAccess(ctx(1), 0));
    let a = alloc(1 << 16);
    upload(a, &pattern(1 << 16));
    (a, b)
}

/// After a sticky `code`, every later call fails with it (cuda.h: "any further CUDA work will
/// return the same error"), in every context; the names still answer.
unsafe fn all_sticky(code: CUresult) {
    let mut p = 0;
    let mut h = std::ptr::null_mut();
    assert_eq!(cuCtxSynchronize(), code);
    assert_eq!(cuMemAlloc_v2(&mut p, 64), code);
    assert_eq!(cuStreamCreate(&mut h, 0), code);
    assert_eq!(cuEventCreate(&mut h, 0), code);
    bind(1);
    assert_eq!(cuMemAlloc_v2(&mut p, 64), code);
    assert_eq!(cuCtxSynchronize(), code);
    assert_eq!(cuMemFree_v2(p), code);
    assert_eq!(describe(code)[0].0, SUCCESS);
}

#[test]
fn contained_and_sticky_faults_end_the_processs_cuda() {
    for (fault, code) in [
        ("contained", 226),
        ("sticky-721", 721),
        ("sticky-810", 810),
        ("sticky-911", 911),
        ("sticky-700", 700),
    ] {
        let case = format!("sticky-ce-{fault}");
        isolated(
            "contained_and_sticky_faults_end_the_processs_cuda",
            &case,
            &rig2(fault),
            &[],
            || unsafe {
                init();
                // Staged (peer access off): no P2P, no fault.
                bind(0);
                let a = alloc(1 << 16);
                bind(1);
                let b = alloc(1 << 16);
                ok(cuMemcpyPeerAsync(
                    b,
                    ctx(1),
                    a,
                    ctx(0),
                    1 << 16,
                    std::ptr::null_mut(),
                ));
                ok(cuCtxSynchronize());
                // Over P2P the copy faults when it runs: the call succeeds, the next one fails.
                ok(cuCtxEnablePeerAccess(ctx(0), 0));
                ok(cuMemcpyPeerAsync(
                    b,
                    ctx(1),
                    a,
                    ctx(0),
                    1 << 16,
                    std::ptr::null_mut(),
                ));
                all_sticky(code);
            },
        );
        let case = format!("sticky-sm-{fault}");
        isolated(
            "contained_and_sticky_faults_end_the_processs_cuda",
            &case,
            &rig2(fault),
            &[],
            || unsafe {
                // A kernel touching the peer: the same, seen at the synchronisation after it.
                let (a, b) = peers();
                let f = kernel(COPY_PTX, c"copy_v4");
                ok(launch(f, 16, 256, std::ptr::null_mut(), &[b, a, 4096]));
                all_sticky(code);
            },
        );
    }
}

#[test]
fn illegal_address_is_sticky_through_kernels_only() {
    isolated(
        "illegal_address_is_sticky_through_kernels_only",
        "ia",
        &rig2("illegal-address"),
        &[],
        || unsafe {
            let (a, b) = peers();
            // The copy engine over P2P is fine.
            ok(cuMemcpyPeerAsync(
                b,
                ctx(1),
                a,
                ctx(0),
                1 << 16,
                std::ptr::null_mut(),
            ));
            ok(cuCtxSynchronize());
            assert_eq!(download(b, 1 << 16), pattern(1 << 16));
            let f = kernel(COPY_PTX, c"copy_v4");
            let s = stream();
            let e = event();
            ok(launch(f, 16, 256, s, &[b, a, 4096]));
            ok(cuEventRecord(e, s));
            let mut r = cuEventQuery(e);
            while r == NOT_READY {
                r = cuEventQuery(e);
            }
            assert_eq!(r, ILLEGAL_ADDRESS);
            all_sticky(ILLEGAL_ADDRESS);
        },
    );
    isolated(
        "illegal_address_is_sticky_through_kernels_only",
        "ia-no-peer",
        &rig3(),
        &[],
        || unsafe {
            // Without peer access a kernel cannot reach the other GPU's memory at all.
            init();
            bind(1);
            let b = alloc(4096);
            bind(0);
            let a = alloc(4096);
            let f = kernel(COPY_PTX, c"copy_v4");
            ok(launch(f, 1, 256, std::ptr::null_mut(), &[b, a, 256]));
            all_sticky(ILLEGAL_ADDRESS);
        },
    );
}

#[test]
fn an_unknown_code_comes_back_from_the_p2p_copy_and_is_not_sticky() {
    isolated(
        "an_unknown_code_comes_back_from_the_p2p_copy_and_is_not_sticky",
        "unknown",
        &rig2("unknown-code"),
        &[],
        || unsafe {
            init();
            bind(0);
            let a = alloc(4096);
            bind(1);
            let b = alloc(4096);
            // Staged: fine.
            ok(cuMemcpyPeerAsync(
                b,
                ctx(1),
                a,
                ctx(0),
                4096,
                std::ptr::null_mut(),
            ));
            ok(cuCtxSynchronize());
            ok(cuCtxEnablePeerAccess(ctx(0), 0));
            assert_eq!(
                cuMemcpyPeerAsync(b, ctx(1), a, ctx(0), 4096, std::ptr::null_mut()),
                36
            );
            // Not a name this (12.x) driver knows.
            assert_eq!(describe(36), [(INVALID_VALUE, None), (INVALID_VALUE, None)]);
            // Nothing is lost: the next calls work.
            ok(cuCtxSynchronize());
            alloc(64);
        },
    );
}

#[test]
fn a_hung_p2p_copy_never_completes() {
    isolated(
        "a_hung_p2p_copy_never_completes",
        "hang",
        &rig2("hang"),
        &[],
        || unsafe {
            let (a, b) = peers();
            let s = stream();
            let e = event();
            ok(cuMemcpyPeerAsync(b, ctx(1), a, ctx(0), 1 << 16, s));
            ok(cuEventRecord(e, s));
            // Queries answer (NOT_READY), they do not hang...
            for _ in 0..5 {
                assert_eq!(cuEventQuery(e), NOT_READY);
            }
            // ...and a synchronisation never returns.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                bind(0);
                tx.send(cuCtxSynchronize()).unwrap();
            });
            assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
            // Work on another stream still runs meanwhile.
            let s2 = stream();
            ok(cuMemsetD32_v2(a, 1, 1));
            ok(cuStreamSynchronize(s2));
            // The blocked thread stays behind; the process ends with the test.
        },
    );
}
