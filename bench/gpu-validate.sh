#!/usr/bin/env bash
# One-shot validation of a rigdoctor release binary on a machine with a real NVIDIA GPU
# (docs/validation.md says how to run it and where its output is recorded).
#
#   bash bench/gpu-validate.sh [OUTDIR]          (default ./gpu-validate-out)
#
# The machine needs the NVIDIA driver; PyTorch and the nvidia-nccl-cu12 wheel are used when
# python3 has them. No cargo: the binary is built elsewhere and taken from $RIGDOCTOR,
# ./target/release/rigdoctor, the checkout this script lives in, or rigdoctor on PATH.
# Every step runs under `timeout -k` with its own limit, and the whole run stays under
# GPU_VALIDATE_BUDGET_S seconds (default 470: 8 minutes with room for the summary). A step that
# fails or times out is recorded and the next one runs. Nothing here changes a GPU setting:
# rigdoctor only reads and copies, nvidia-smi is only queried.
#
# Output, flat in OUTDIR: summary.txt (what is printed at the end, with the system facts and
# nvidia-smi topo -m), logs.txt (every step's command, exit code, wall time, stdout and stderr),
# check.json, p2p.json, bandwidth.json, nccl.json, cluster.json (rigdoctor's reports),
# nvidia-smi-q.txt.
# Overrides: RIGDOCTOR (binary), PYTHON (python3 with torch), NCCL_LIB (libnccl.so.2),
# GPU_VALIDATE_BUDGET_S.
set -u -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-./gpu-validate-out}
budget_s=${GPU_VALIDATE_BUDGET_S:-470}
grace_s=5
py=${PYTHON:-python3}

mkdir -p "$out" || { echo "gpu-validate: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
# Only this script's own files are replaced; anything else in OUTDIR is left alone.
rm -f "$out"/{summary.txt,logs.txt,check.json,p2p.json,bandwidth.json,nccl.json,cluster.json,nvidia-smi-q.txt}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
logs=$out/logs.txt
steps=$tmp/steps.tsv
: >"$logs"
: >"$steps"

now_us() {
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        local t=${EPOCHREALTIME/[.,]/}
        echo "$((10#$t))"
    else
        echo $(($(date +%s%N) / 1000))
    fi
}
t_start=$(now_us)
elapsed_s() { echo $((($(now_us) - t_start) / 1000000)); }

interrupted=0
current=""
last_skipped=0
# shellcheck disable=SC2317  # called by the trap below
on_signal() {
    interrupted=1
    if [[ -n $current ]]; then kill -TERM "$current" 2>/dev/null; fi
}
trap on_signal INT TERM HUP

# step NAME LIMIT_S CMD...: run CMD under timeout (stdin /dev/null), stdout to $tmp/NAME.out and
# stderr to $tmp/NAME.err, both appended to logs.txt; one line in the step table. The limit is
# cut to what is left of the budget less reserve_s (kept for the watchdog test, so that hangs in
# the steps before it cannot crowd it out); with less than 5 s left the step is skipped.
reserve_s=0
step() {
    local name=$1 limit=$2
    shift 2
    local cmd=${*//$'\n'/ }
    local left=$((budget_s - $(elapsed_s) - grace_s - reserve_s))
    last_skipped=1
    if ((interrupted)); then
        printf '%s\t-\t0\t0\tnot run (interrupted)\t%s\n' "$name" "$cmd" >>"$steps"
        return 1
    fi
    if ((left < 5)); then
        printf '%s\t-\t0\t0\tskipped: time budget spent\t%s\n' "$name" "$cmd" >>"$steps"
        return 1
    fi
    last_skipped=0
    ((limit > left)) && limit=$left
    local o=$tmp/$name.out e=$tmp/$name.err t0 rc wall note
    t0=$(now_us)
    timeout -k "$grace_s" "$limit" "$@" </dev/null >"$o" 2>"$e" &
    current=$!
    while :; do
        wait "$current"
        rc=$?
        kill -0 "$current" 2>/dev/null || break
    done
    current=""
    wall=$(($(now_us) - t0))
    wall=$((wall / 1000000)).$(printf '%02d' $((wall / 10000 % 100)))
    case $rc in
        0) note="ok" ;;
        124) note="TIMED OUT after ${limit} s (SIGTERM)" ;;
        137) note="KILLED ${grace_s} s after the ${limit} s timeout (SIGKILL)" ;;
        125 | 126 | 127) note="could not run (timeout/exec error $rc)" ;;
        *) note="exit $rc" ;;
    esac
    ((interrupted)) && note="$note, interrupted"
    if ((rc > 2)); then
        local orphans
        orphans=$(reap_orphans)
        [[ -n $orphans ]] && note="$note; killed the worker it left running (pid$orphans)"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$wall" "$limit" "$note" "$cmd" >>"$steps"
    {
        echo "===== $name: $cmd"
        echo "===== exit $rc ($note), wall ${wall} s, limit ${limit} s, at +$(elapsed_s) s"
        echo "----- stdout"
        if [[ $name == smi-q ]]; then echo "(in nvidia-smi-q.txt)"; else cat "$o"; fi
        echo "----- stderr"
        cat "$e"
        echo
    } >>"$logs"
    return "$rc"
}

# Workers of this binary whose rigdoctor is gone. rigdoctor starts its worker in a process group
# of its own and stops it on Ctrl-C (SIGINT) only; a rigdoctor ended by timeout's SIGTERM or
# SIGKILL leaves it running, and a worker stuck on the GPU would then hold it for the later steps.
# After a step that timed out or crashed, these are orphans of that step: SIGKILL, and the step
# table says so.
reap_orphans() {
    [[ -n $rig ]] || return 0
    local r p pid c pp killed=""
    r=$(readlink -f "$rig")
    for p in /proc/[0-9]*; do
        [[ $(readlink -f "$p/exe" 2>/dev/null) == "$r" ]] || continue
        c=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)
        [[ $c == *__worker* ]] || continue
        pp=$(awk '/^PPid:/ {print $2}' "$p/status" 2>/dev/null)
        [[ -n $pp && $(readlink -f "/proc/$pp/exe" 2>/dev/null) == "$r" ]] && continue
        pid=${p#/proc/}
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
        killed+=" $pid"
    done
    echo "$killed"
}

skip() { printf '%s\t-\t0\t0\tskipped: %s\t-\n' "$1" "$2" >>"$steps"; }

# --- what to run -------------------------------------------------------------------------------
rig=${RIGDOCTOR:-}
if [[ -z $rig ]]; then
    for c in ./target/release/rigdoctor "$here/../target/release/rigdoctor" "$(command -v rigdoctor || true)"; do
        if [[ -n $c && -x $c ]]; then rig=$c; break; fi
    done
fi
if [[ -n $rig && ! -x $rig ]]; then
    echo "gpu-validate: RIGDOCTOR=$rig is not an executable file" >&2
    rig=""
fi
[[ -n $rig ]] && rig=$(cd "$(dirname "$rig")" && pwd)/$(basename "$rig")

have_py=0
command -v "$py" >/dev/null 2>&1 && have_py=1

# The NCCL wheel's library (nvidia-nccl-cu12): the python package first, then the same places
# rigdoctor itself looks (src/probe/gpu/nccl.rs `candidates`).
nccl_lib=${NCCL_LIB:-}
nccl_how="NCCL_LIB"
if [[ -z $nccl_lib && $have_py -eq 1 ]]; then
    d=$(timeout -k 2 20 "$py" -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null </dev/null)
    if [[ -n $d && -e $d/lib/libnccl.so.2 ]]; then nccl_lib=$d/lib/libnccl.so.2; nccl_how="python3 nvidia.nccl"; fi
fi
if [[ -z $nccl_lib ]]; then
    for root in ${VIRTUAL_ENV:+"$VIRTUAL_ENV/lib"} ${CONDA_PREFIX:+"$CONDA_PREFIX/lib"} "$HOME/.local/lib" /usr/local/lib /usr/lib /opt/conda/lib; do
        for c in "$root"/python3*/{site,dist}-packages/nvidia/nccl/lib/libnccl.so.2; do
            if [[ -e $c ]]; then nccl_lib=$c; nccl_how="glob $root"; break 2; fi
        done
    done
fi

# --- the machine -------------------------------------------------------------------------------
step uname 5 uname -a
step driver-version 5 cat /proc/driver/nvidia/version
if command -v nvidia-smi >/dev/null 2>&1; then
    step smi-gpus 15 nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,pcie.link.gen.max,pcie.link.width.max,memory.total,persistence_mode --format=csv
    step smi-topo 15 nvidia-smi topo -m
    step smi-q 30 nvidia-smi -q
    cp "$tmp/smi-q.out" "$out/nvidia-smi-q.txt" 2>/dev/null
else
    skip smi-gpus "nvidia-smi not on PATH"
fi

# --- rigdoctor ---------------------------------------------------------------------------------
reserve_s=35 # the watchdog step's 25 s + its kill grace + the leftover check
if [[ -n $rig ]]; then
    step version 5 "$rig" --version
    step check 120 "$rig" check --json -o "$out/check.json" --color never
    step p2p 45 "$rig" p2p --json -o "$out/p2p.json" --color never
    step bandwidth 60 "$rig" bandwidth --devices 0 --json -o "$out/bandwidth.json" --color never
else
    for s in version check p2p bandwidth; do skip "$s" "no rigdoctor binary (set RIGDOCTOR)"; done
fi

# The size, copies, warm-up and samples of rigdoctor's bandwidth run, for torch_copy.py.
bandwidth_config() {
    "$py" - "$out/bandwidth.json" <<'PY'
import json, sys
try:
    c = json.load(open(sys.argv[1]))["facts"]["gpu"]["bandwidth"]["config"]
    mib, rest = divmod(int(c["size_bytes"]), 1 << 20)
    print(mib, c["iters"], c["warmup"], c["samples"], "from-bandwidth.json" if rest == 0 else "size-rounded-to-MiB")
except Exception:
    print(32, 16, 2, 3, "rigdoctor-defaults")
PY
}

# PyTorch, right after rigdoctor's run, with the size, copies, warm-up and samples it used
# (bench/torch_copy.py: same pinned memory, CUDA events, median, GB = 1e9 bytes).
torch_note=""
if ((have_py == 0)); then
    torch_note="$py not found"
elif ! step torch-import 60 "$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'; then
    if ((last_skipped)); then torch_note="not run (time budget spent or interrupted)"; else
        torch_note="PyTorch missing or failing to import (see torch-import in logs.txt): comparison skipped"
    fi
elif [[ ! -f $here/torch_copy.py ]]; then
    torch_note="$here/torch_copy.py not found: copy it next to this script"
else
    read -r size_mib iters warmup samples cfg_note < <(bandwidth_config 2>/dev/null || echo 32 16 2 3 rigdoctor-defaults)
    torch_note="torch_copy.py --size-mib $size_mib --iters $iters --warmup $warmup --samples $samples ($cfg_note)"
    step torch-copy 60 "$py" "$here/torch_copy.py" --size-mib "$size_mib" --iters "$iters" \
        --warmup "$warmup" --samples "$samples" --device 0
fi
[[ -n $torch_note ]] && echo "torch run: $torch_note" >>"$tmp/notes"

if [[ -n $rig ]]; then
    if [[ -n $nccl_lib ]]; then
        echo "nccl: --nccl-lib $nccl_lib (found by $nccl_how)" >>"$tmp/notes"
        step nccl 60 "$rig" nccl --json -o "$out/nccl.json" --color never --nccl-lib "$nccl_lib"
        # The same sweep with every rank in one process (ncclCommInitAll), for comparison.
        step nccl-single 45 "$rig" nccl --single-process --max-size 64M --json --color never --nccl-lib "$nccl_lib"
    else
        echo "nccl: the nvidia-nccl-cu12 wheel was not found; rigdoctor searched on its own" >>"$tmp/notes"
        step nccl 60 "$rig" nccl --json -o "$out/nccl.json" --color never
    fi
    # rigdoctor cluster as a world of one on this machine: the coordinator, the node check and
    # a one-rank NCCL communicator (ncclGetUniqueId / ncclCommInitRank) on the real library.
    nccl_arg=()
    [[ -n $nccl_lib ]] && nccl_arg=(--nccl-lib "$nccl_lib")
    step cluster-1 60 "$rig" cluster --rank 0 --world-size 1 --coordinator 127.0.0.1:29517 \
        --join-timeout 20 --json -o "$out/cluster.json" --color never "${nccl_arg[@]}"
    # Last: a kill of a worker stuck in a kernel must not disturb the steps above.
    reserve_s=0
    step watchdog 25 "$rig" watchdog-test --timeout 3 --devices 0 --json
    # Workers of this binary still alive after it (the JSON's "reaped", checked from outside).
    # shellcheck disable=SC2016  # the script is for bash -c, its $1 is the binary
    step leftover-workers 5 bash -c 'r=$(readlink -f "$1"); n=0
        for p in /proc/[0-9]*; do
            [[ $(readlink -f "$p/exe" 2>/dev/null) == "$r" ]] || continue
            c=$(tr "\0" " " <"$p/cmdline" 2>/dev/null)
            [[ $c == *__worker* ]] && { echo "pid ${p#/proc/}: $c"; n=1; }
        done
        ((n)) || echo none' leftover-workers "$rig"
    if command -v nvidia-smi >/dev/null 2>&1; then
        step smi-apps-after 10 nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
    fi
    # The GPU still runs kernels after the kill (the P2P self-test JIT-loads and runs copy_v4).
    step p2p-after-watchdog 30 "$rig" p2p --devices 0 --color never
else
    for s in nccl watchdog; do skip "$s" "no rigdoctor binary (set RIGDOCTOR)"; done
fi

# --- summary -----------------------------------------------------------------------------------
summary() {
    echo "gpu-validate $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), total $(elapsed_s) s of a ${budget_s} s budget"
    echo "rigdoctor: ${rig:-none found}$( [[ -s $tmp/version.out ]] && printf ' (%s)' "$(head -1 "$tmp/version.out")")"
    echo "kernel:    $(head -1 "$tmp/uname.out" 2>/dev/null)"
    if [[ -s $tmp/driver-version.out ]]; then
        echo "driver:    $(head -1 "$tmp/driver-version.out")"
    else
        echo "driver:    /proc/driver/nvidia/version not readable (see nvidia-smi below)"
    fi
    [[ -s $tmp/smi-gpus.out ]] && sed 's/^/  /' "$tmp/smi-gpus.out"
    [[ -s $tmp/torch-import.out ]] && echo "torch:     $(head -1 "$tmp/torch-import.out")"
    [[ -f $tmp/notes ]] && cat "$tmp/notes"
    echo
    echo "steps (exit code, wall time, limit)"
    while IFS=$'\t' read -r name rc wall limit note _; do
        printf '  %-20s %4s %8s s %4s s  %s\n' "$name" "$rc" "$wall" "$limit" "$note"
    done <"$steps"
    echo "  rigdoctor exit codes: 0 no finding at/above --fail-on error, 1 at least one, 2 bad usage"
    echo
    if ((have_py)); then
        "$py" - "$out" "$tmp" <<'PY' || echo "(the JSON reports could not be summarised: see logs.txt)"
import json, os, sys

out, tmp = sys.argv[1], sys.argv[2]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:  # absent or not JSON: say so, go on
        return {"_error": f"{os.path.basename(path)}: {e.__class__.__name__}: {e}"}


def dig(d, *keys):
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def first_line(name, n=1):
    try:
        with open(os.path.join(tmp, name)) as f:
            lines = f.read().splitlines()
        return lines[n] if len(lines) > n else ""
    except OSError:
        return ""


def findings(r):
    return ", ".join(f"{f.get('severity')}[{f.get('id')}]" for f in r.get("findings", [])) or "none"


check = load(os.path.join(out, "check.json"))
print("check:", first_line("check.out") or "(no text report)")
print("  findings:", check.get("_error") or findings(check))
p2p = load(os.path.join(out, "p2p.json"))
local = dig(p2p, "facts", "gpu", "p2p", "local")
if isinstance(local, list) and local:
    for t in local:
        paths = ", ".join(f"{p.get('path')} {p.get('verdict')}" for p in t.get("paths", []))
        print(f"  self-test GPU {t.get('from')}: {t.get('status')}: {paths or '-'} ({t.get('elapsed_ms', 0):.0f} ms)")
else:
    print("  self-test: not in p2p.json", p2p.get("_error", ""))

bw = load(os.path.join(out, "bandwidth.json"))
b = dig(bw, "facts", "gpu", "bandwidth") or {}
torch = {}
try:
    with open(os.path.join(tmp, "torch-copy.out")) as f:
        torch = json.loads(f.read().strip().splitlines()[-1])
except Exception:
    pass
cfg = b.get("config") or {}
print()
print(f"bandwidth GPU 0, copy engine, GB/s = 1e9 B/s, median of {cfg.get('samples', '?')} samples, "
      f"{cfg.get('size_bytes', 0) / 2**20:.0f} MiB x {cfg.get('iters', '?')} copies"
      + (f"; PyTorch {torch.get('torch')} same sizes" if torch else "; PyTorch: not run"))
print(f"  {'kind':<6} {'rigdoctor':>10} {'pytorch':>10} {'ratio':>7}")
meas = [m for m in b.get("measurements", []) if not m.get("latency") and not m.get("bidirectional") and m.get("method") == "ce"]
for kind in ("h2d", "d2h", "local"):
    m = next((m for m in meas if m.get("kind") == kind), None)
    ours = dig(m, "stats", "median") if m else None
    theirs = dig(torch, "gbps", kind)
    o = f"{ours:.2f}" if isinstance(ours, (int, float)) else (m.get("status", "-") if m else "-")
    t = f"{theirs:.2f}" if isinstance(theirs, (int, float)) else "-"
    r = f"{ours / theirs:.3f}" if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and theirs else "-"
    print(f"  {kind:<6} {o:>10} {t:>10} {r:>7}")
for l in b.get("links", []) or []:
    print(f"  link under load GPU {l.get('device')}: Gen{l.get('gen')} x{l.get('width')} "
          f"(max Gen{l.get('max_gen')} x{l.get('max_width')}, {l.get('samples')} readings), "
          f"throttle 0x{(l.get('throttle_reasons') or 0):x}, replays {l.get('replays_before')} -> {l.get('replays_after')}")
if not b:
    print("  no bandwidth facts:", bw.get("_error", "see logs.txt"))
print("  findings:", bw.get("_error") or findings(bw))

nc = load(os.path.join(out, "nccl.json"))
n = dig(nc, "facts", "gpu", "nccl") or {}
lib = n.get("library") or {}
print()
if "path" in lib:
    print(f"nccl {lib.get('version')} ({lib.get('path')}), ranks on devices {n.get('devices')}")
else:
    print("nccl: library not loaded:", lib.get("unknown", ""), lib.get("detail", nc.get("_error", "")))
for r in n.get("results", []):
    if r.get("status") == "measured":
        print(f"  {r['bytes']:>10} B  {r['time_us']:9.1f} us  algbw {r['algbw_gbps']:7.2f}  busbw {r['busbw_gbps']:7.2f} GB/s  wrong {r.get('wrong')}")
    else:
        print(f"  {r.get('bytes'):>10} B  {r.get('status')} {r.get('stage') or r.get('error') or ''}")
for c in n.get("channels", [])[:4]:
    print(f"  channel {c.get('channel')}: {c.get('from_rank')} -> {c.get('to_rank')} via {c.get('transport')} {c.get('via')}")
print("  findings:", nc.get("_error") or findings(nc))

print()
wd_rc = None
try:
    with open(os.path.join(tmp, "steps.tsv")) as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if cols[0] == "watchdog":
                wd_rc = cols[1]
except OSError:
    pass
wd = {}
try:
    with open(os.path.join(tmp, "watchdog.out")) as f:
        wd = json.loads(f.read().strip().splitlines()[-1])
except Exception:
    pass
err = first_line("watchdog.err", 0)
if wd:
    verdict = "PASS" if wd_rc == "0" and wd.get("outcome") == "killed" else "FAIL"
    print(f"watchdog: {verdict}: outcome {wd.get('outcome')} after {wd.get('elapsed_s')} s "
          f"(deadline {wd.get('deadline_s')} s), reaped {json.dumps(wd.get('reaped'))}, exit {wd_rc}")
elif "unrecognized subcommand" in err:
    print("watchdog: NOT TESTED: this rigdoctor has no `watchdog-test` command (build a newer checkout)")
elif wd_rc in (None, "-"):
    print("watchdog: NOT TESTED: the step did not run (see the step table)")
else:
    print(f"watchdog: NOT TESTED: exit {wd_rc}, no JSON on stdout; {err}")
left = first_line("leftover-workers.out", 0)
if left:
    print("  worker processes left after it:", left)
apps = first_line("smi-apps-after.out", 1)
if os.path.exists(os.path.join(tmp, "smi-apps-after.out")):
    print("  GPU compute processes after it:", apps or "none")
PY
    else
        echo "(python3 not found: the JSON reports are in $out, not summarised)"
    fi
    echo
    if [[ -s $tmp/smi-topo.out ]]; then
        echo "nvidia-smi topo -m"
        cat "$tmp/smi-topo.out"
        echo
    fi
    echo "files in $out: $(cd "$out" && printf '%s ' *)"
}
summary >"$out/summary.txt" 2>&1
cat "$out/summary.txt"
if [[ -z $rig ]]; then
    echo "gpu-validate: no rigdoctor binary: build it with cargo build --release and set RIGDOCTOR" >&2
    exit 2
fi
exit 0
