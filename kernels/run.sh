#!/bin/bash
# The kernel matrix: every ambpf BPF program loaded, attached and functionally checked on Debian's
# 5.10, 6.1 and 6.12 kernels (under qemu) and on the host's own kernel (in a throwaway netns).
#
# usage: kernels/run.sh [--out DIR] [--kernels "5.10 6.1 6.12 host"] [--no-docs]
#   --out DIR     where the per-kernel console logs go (default .cache/kernels/results)
#   --no-docs     do not rewrite docs/kernels.md (the test uses this for its own runs)
# env: AMBPF_KERNELS_CACHE (default <repo>/.cache/kernels), AMBPF_DEBIAN_MIRROR (fetch.sh),
#      AMBPF_KERNELS_OBJECTS (a directory of prebuilt *.bpf.o instead of compiling bpf/*.bpf.c).
# Exit status: 0 when every ambpf program passes everywhere and the checker's self-test answers as
# expected; 1 on a failed check; 3 when a kernel cannot be fetched.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${AMBPF_KERNELS_CACHE:-$repo/.cache/kernels}
out=$cache/results
kernels="5.10 6.1 6.12 host"
docs=$repo/docs/kernels.md
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --kernels) kernels=$2; shift 2 ;;
    --no-docs) docs=""; shift ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { echo "kernels: $*" >&2; }

# --- tools (a fresh machine gets them here) ---
need=()
for p in qemu-system-x86 busybox-static libbpf-dev libelf-dev zlib1g-dev gcc clang llvm xz-utils; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
clang=$(command -v clang || command -v clang-14)

mkdir -p "$cache" "$out"
work=$(mktemp -d "$cache/.run.XXXXXX")
host_cg=""
pids=()
# Job control gives every guest its own process group, so cleanup can end a guest's qemu with it.
set -m
cleanup() {
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done
  if [[ -n $host_cg ]]; then rmdir "$host_cg" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- kernels (cached; a fetch failure is an error with fetch.sh's reason) ---
for k in $kernels; do
  [[ $k == host ]] && continue
  if ! "$here/fetch.sh" "$k" "$cache"; then
    log "cannot fetch Debian's $k kernel (see above); set AMBPF_SKIP_KERNELS=1 to skip the matrix on purpose"
    exit 3
  fi
done

# --- the checker: static, against libbpf-dev's libbpf.a; rebuilt when its sources change ---
# fill.c includes bpf/include/ambpf.h directly: a changed map layout rebuilds the checker.
sum=$(cat "$here"/checker/*.[ch] "$repo"/bpf/include/ambpf.h | sha256sum | cut -c1-16)
checker=$cache/build/checker-$sum
if [[ ! -x $checker ]]; then
  mkdir -p "$cache/build"
  gcc -O2 -Wall -Wextra -Werror -static -I "$repo/bpf/include" -o "$checker.tmp" "$here"/checker/*.c -lbpf -lelf -lz 2>"$work/gcc.log" \
    || { grep -v 'statically linked' "$work/gcc.log" >&2; exit 1; }
  mv "$checker.tmp" "$checker"
  find "$cache/build" -name 'checker-*' ! -name "$(basename "$checker")" -delete
fi

# --- the objects: ambpf's programs plus the checker's self-test fixture ---
objects=$work/objects
mkdir -p "$objects"
if [[ -n ${AMBPF_KERNELS_OBJECTS:-} ]]; then
  cp "$AMBPF_KERNELS_OBJECTS"/*.o "$objects/"
else
  for src in "$repo"/bpf/*.bpf.c; do
    [[ -e $src ]] || continue
    "$clang" -O2 -g -target bpf -mcpu=v3 -I "$repo/bpf/include" -I /usr/include/x86_64-linux-gnu \
      -c "$src" -o "$objects/$(basename "${src%.c}").o"
  done
fi
"$clang" -O2 -g -target bpf -mcpu=v3 -I /usr/include/x86_64-linux-gnu \
  -c "$here/fixtures/selftest.bpf.c" -o "$objects/checker-selftest.bpf.o"

# --- initramfs: one base for all kernels + each kernel's modules ---
"$here/initramfs.sh" base "$work/base.cpio" "$checker" "$objects"

# --- run: guests two at a time (two cores), the host in a throwaway netns and cgroup ---
run_host() {
  local cgroot
  cgroot=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
  host_cg=$cgroot/ambpf-kernels-$$-$RANDOM
  # unshare --net: the veth and every tc/sk_lookup attachment vanish with the namespace; the cgroup
  # is ours (never the root) and check.sh removes it.
  PATH=/usr/sbin:/usr/bin:/sbin:/bin unshare --net -- sh "$here/guest/check.sh" "$host_cg" "$checker" "$objects"/*.o \
    >"$out/host.log" 2>&1 || true
  rmdir "$host_cg" 2>/dev/null || true
}
run_guest() {
  local k=$1 start=$SECONDS
  "$here/initramfs.sh" modules "$work/modules-$k.cpio" "$cache/$k/modules"
  cat "$work/base.cpio" "$work/modules-$k.cpio" >"$work/initrd-$k"
  "$here/boot.sh" "$cache/$k/vmlinuz" "$work/initrd-$k" "$out/$k.log" 150 || true
  log "$k: booted and checked in $((SECONDS - start)) s"
}
for k in $kernels; do
  rm -f "$out/$k.log"
  if [[ $k == host ]]; then run_host; continue; fi
  while (($(jobs -rp | wc -l) >= 2)); do wait -n || true; done
  run_guest "$k" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
pids=()

# --- the table: printed, written to docs/kernels.md, exit status from the verdict ---
args=(--results "$out" --kernels "$kernels")
[[ -n $docs ]] && args+=(--write "$docs")
for k in $kernels; do [[ $k != host && -f $cache/$k/package ]] && args+=(--package "$k=$(cat "$cache/$k/package")"); done
# Not exec: the EXIT trap must still remove this run's work directory (~30 MB of initramfs).
rc=0
"$repo/node_modules/node/bin/node" "$repo/src/kernels/report.ts" "${args[@]}" || rc=$?
exit $rc
