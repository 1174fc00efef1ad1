#!/usr/bin/env bash
# Times `rigdoctor bandwidth` (and `check`) end to end on a fake 8-GPU PCIe rig (fakegpu: CUDA events report
# the model's times, so what this measures is rigdoctor's own cost: process start, worker start,
# CUDA init, per-step protocol, pattern generation and verification). Prints one line per case.
# Usage: bash bench/bandwidth-fake-8gpu.sh   (release build; results go in docs/bandwidth.md)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p rigdoctor -p fakegpu
libs=target/release/fakegpu-libs
mkdir -p "$libs"
ln -sf ../libfakegpu.so "$libs/libcuda.so.1"
ln -sf ../libfakegpu.so "$libs/libnvidia-ml.so.1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/rig.json" <<'PY'
import json, sys
gpus = [{"name": "NVIDIA GeForce RTX 4090", "bus_id": f"0000:{0x11 + 0x10 * i:02x}:00.0", "uuid": f"GPU-{i}",
         "memory_mib": 24576, "cc": [8, 9], "pcie": {"gen": 1, "width": 16, "max_gen": 4, "max_width": 16}}
        for i in range(8)]
pairs = [{"a": a, "b": b, "topology": "SYS"} for a in range(8) for b in range(a + 1, 8)]
json.dump({"gpus": gpus, "pairs": pairs}, open(sys.argv[1], "w"))
PY
mkdir -p "$work/root"
run() {
    local label=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    LD_LIBRARY_PATH=$libs FAKEGPU_RIG=$work/rig.json target/release/rigdoctor bandwidth --gpu \
        --sysroot "$work/root" --json "$@" > "$work/out.json" || true
    t1=$(date +%s.%N)
    python3 - "$work/out.json" "$label" "$t0" "$t1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); b = r["facts"]["gpu"]["bandwidth"]
wall = float(sys.argv[4]) - float(sys.argv[3])
n = len(b["measurements"]); steps = len({(m["kind"], m["method"], m["from"], m["to"], m["bidirectional"], m["latency"]) for m in b["measurements"]})
print(f"{sys.argv[2]:<34} wall {wall:6.2f} s  GPU part {b['wall_s']:6.2f} s  {n:4d} measurements  {1e3 * b['wall_s'] / max(n, 1):6.1f} ms each")
PY
}
start=$(date +%s.%N); target/release/rigdoctor --version >/dev/null; end=$(date +%s.%N)
python3 -c "print(f'process start (rigdoctor --version)      {1e3*($end-$start):.1f} ms')"
run "overhead only (--size 16 --iters 1)" --size 16 --iters 1 --samples 1
run "default (32 MiB x 16 x 3 samples)"
run "--quick" --quick
run "--bidirectional --latency" --bidirectional --latency
ln -sf ../libfakegpu.so "$libs/libnccl.so.2"
for args in "check --quick" "check"; do
    t0=$(date +%s.%N)
    LD_LIBRARY_PATH=$libs FAKEGPU_RIG=$work/rig.json target/release/rigdoctor $args --gpu \
        --sysroot "$work/root" --json > "$work/out.json" || true
    t1=$(date +%s.%N)
    python3 -c "print(f'rigdoctor $args'.ljust(35) + f'wall {$t1 - $t0:6.2f} s')"
done
