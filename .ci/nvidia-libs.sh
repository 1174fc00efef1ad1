#!/usr/bin/env bash
# Fetch, once, the real NVIDIA user-space libraries that tests/real_libs.rs runs rigdoctor against
# on a machine without a GPU (docs/testing.md, "Real NVIDIA libraries"):
#   CACHE/nccl-2.18.3/libnccl.so.2, CACHE/nccl-2.32.3/libnccl.so.2  from the PyPI wheels nvidia-nccl-cu12
#   CACHE/driver/libcuda.so.1, CACHE/driver/libnvidia-ml.so.1        from Debian bookworm non-free
#                                                                     (libcuda1, libnvidia-ml1: driver 535)
# Nothing is installed or changed system-wide: pip only downloads, apt runs with its own sources
# list, lists and cache under CACHE/apt, and the .deb files are unpacked with dpkg -x.
#
# Usage: .ci/nvidia-libs.sh [CACHE_DIR]   (default ${XDG_CACHE_HOME:-$HOME/.cache}/rigdoctor-ci)
# Needs python3 with pip, apt-get and dpkg (a Debian or Ubuntu host) and the network, the first
# time only. Progress goes to stderr; stdout is one line for eval:
#   export RIGDOCTOR_REAL_LIBS=CACHE_DIR
set -euo pipefail

CACHE=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/rigdoctor-ci}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

say() { echo "nvidia-libs: $*" >&2; }
die() {
  echo "nvidia-libs: error: $*" >&2
  exit 1
}
for tool in python3 apt-get dpkg; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (needs python3 with pip, apt-get and dpkg)"
done

TMP=$(mktemp -d "$CACHE/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# An ELF shared object that the loader can open (dlopen needs no GPU and no kernel module).
loads() {
  [ -s "$1" ] && [ "$(head -c 4 "$1" | tail -c 3)" = "ELF" ] &&
    python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$1" 2>/dev/null
}

# ---- NCCL: the wheels' libnccl.so.2 ---------------------------------------------------------------
# The wheels carry only platform tags: 2.18.3 is manylinux1_x86_64, 2.32.3 manylinux_2_27_x86_64
# (pip lists no other build for them). Hashes as PyPI serves them (files.pythonhosted.org), so a
# different file fails loudly.
declare -A NCCL_SHA256=(
  [2.18.3]=89cf220910c43e53df992f54f7aa2a35c6d606b077c9ae95b1f17c544d3ad3f3
  [2.32.3]=bb94b2348e4861d5e8aa00b36c3d12d9bdf9c6369b82cbb723de0b582280a21c
)
for v in 2.18.3 2.32.3; do
  dest="$CACHE/nccl-$v/libnccl.so.2"
  # ncclGetVersion needs no GPU: 2.18.3 -> 21803 (NCCL_VERSION_CODE, src/nccl.h.in).
  want=$(echo "$v" | awk -F. '{ printf "%d", $1 * 10000 + $2 * 100 + $3 }')
  if [ -s "$dest" ]; then
    say "nccl $v: cached ($dest)"
  else
    say "nccl $v: downloading nvidia-nccl-cu12==$v from PyPI"
    echo "nvidia-nccl-cu12==$v --hash=sha256:${NCCL_SHA256[$v]}" >"$TMP/req-$v.txt"
    python3 -m pip download --quiet --no-deps --no-cache-dir --only-binary=:all: \
      --platform manylinux1_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 \
      --require-hashes -r "$TMP/req-$v.txt" -d "$TMP/wheel-$v" >&2 ||
      die "pip could not download nvidia-nccl-cu12==$v (network, PyPI, or the pinned hash)"
    wheel=$(find "$TMP/wheel-$v" -name "nvidia_nccl_cu12-$v-*.whl" | head -1)
    [ -n "$wheel" ] || die "no nvidia-nccl-cu12 $v wheel after pip download"
    mkdir -p "$CACHE/nccl-$v"
    python3 - "$wheel" "$dest.part" <<'EOF' || die "could not extract nvidia/nccl/lib/libnccl.so.2 from $wheel"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("nvidia/nccl/lib/libnccl.so.2") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    mv "$dest.part" "$dest"
    rm -rf "$TMP/wheel-$v"
  fi
  got=$(python3 -c '
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
v = ctypes.c_int(0)
print(v.value if lib.ncclGetVersion(ctypes.byref(v)) == 0 else "error")' "$dest" 2>&1) || got="not loadable: $got"
  [ "$got" = "$want" ] || die "$dest: ncclGetVersion gave $got, expected $want (delete it to fetch again)"
done

# ---- Driver: libcuda.so.1 and libnvidia-ml.so.1 from Debian non-free -------------------------------
DRV="$CACHE/driver"
if [ -s "$DRV/libcuda.so.1" ] && [ -s "$DRV/libnvidia-ml.so.1" ]; then
  say "driver: cached ($DRV, $(cat "$DRV/VERSION" 2>/dev/null || echo 'version unknown'))"
else
  # Reuse the Debian mirror this machine's apt already uses (often the only reachable one).
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  mirror=${mirror%/}
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || die "$keyring missing: install debian-archive-keyring to verify Debian's packages"
  say "driver: libcuda1 and libnvidia-ml1 from $mirror bookworm non-free (private apt state in $CACHE/apt)"
  A="$CACHE/apt"
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/sources.list.d" "$A/preferences.d"
  # Only non-free: the two libraries need nothing else to be unpacked, and ldd shows they link
  # only libc, libm, libdl, libpthread and librt (their package dependencies, e.g.
  # libnvidia-ptxjitcompiler1 and nvidia-alternative, are not needed to load them).
  echo "deb [signed-by=$keyring] $mirror bookworm non-free" >"$A/sources.list"
  opts=(
    -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache"
    -o "Dir::Etc::SourceList=$A/sources.list" -o "Dir::Etc::SourceParts=$A/sources.list.d"
    -o "Dir::Etc::Preferences=$A/preferences" -o "Dir::Etc::PreferencesParts=$A/preferences.d"
    -o "APT::Get::List-Cleanup=0" -o "Acquire::Languages=none"
    -o "APT::Update::Error-Mode=any" # a failed fetch fails the update (apt >= 2.1)
  )
  # apt drops to the _apt user for downloads when root, who may not reach a private cache dir.
  [ "$(id -u)" = 0 ] && opts+=(-o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" -q update >&2 || die "apt-get update failed for $mirror bookworm non-free"
  mkdir -p "$TMP/debs"
  (cd "$TMP/debs" && apt-get "${opts[@]}" -q download libcuda1 libnvidia-ml1 >&2) ||
    die "apt-get download libcuda1 libnvidia-ml1 failed"
  for deb in "$TMP"/debs/*.deb; do dpkg -x "$deb" "$TMP/root"; done
  mkdir -p "$DRV"
  for so in libcuda.so.1 libnvidia-ml.so.1; do
    # libcuda.so.1 -> libcuda.so.535.x: copy the file the symlink resolves to.
    src=$(find "$TMP/root" -name "$so" | head -1)
    [ -n "$src" ] || die "$so not in the downloaded packages"
    cp -L "$src" "$DRV/$so.part" && mv "$DRV/$so.part" "$DRV/$so"
  done
  dpkg-deb -f "$(find "$TMP/debs" -name 'libcuda1_*.deb' | head -1)" Version >"$DRV/VERSION"
  say "driver: $(cat "$DRV/VERSION")"
fi
for so in libcuda.so.1 libnvidia-ml.so.1; do
  loads "$DRV/$so" || die "$DRV/$so does not load here (ldd $DRV/$so; delete it to fetch again)"
done

say "ready: $CACHE/{driver,nccl-2.18.3,nccl-2.32.3}"
printf 'export RIGDOCTOR_REAL_LIBS=%q\n' "$CACHE"
