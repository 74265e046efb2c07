#!/bin/bash
# Build the guest's initramfs pieces: kernels/initramfs.sh base OUT.cpio CHECKER OBJECTS_DIR
#                                  or: kernels/initramfs.sh modules OUT.cpio MODULES_DIR
# The kernel unpacks concatenated cpio archives in order, so the common base (busybox, iproute2,
# checker, objects) is built once per run and each kernel only adds its own modules archive.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kind=$1; out=$2
root=$(mktemp -d "${TMPDIR:-/tmp}/ambpf-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT

# A dynamically linked binary plus the libraries ldd names (iproute2's ip: veth and addresses,
# which busybox's ip cannot make).
copy_with_libs() {
  local bin=$1 dest=$2
  install -D -m 0755 "$bin" "$root$dest"
  ldd "$bin" | grep -o '/[^ ]*' | while read -r lib; do
    install -D -m 0755 "$lib" "$root$lib"
  done
}

case $kind in
  base)
    checker=$3; objects=$4
    mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,objects,modules}
    install -m 0755 /bin/busybox "$root/bin/busybox"
    copy_with_libs "$(command -v ip)" /sbin/ip
    install -m 0755 "$here/guest/init" "$root/init"
    install -m 0755 "$here/guest/check.sh" "$root/check.sh"
    install -m 0755 "$checker" "$root/checker"
    cp "$objects"/*.o "$root/objects/"
    ;;
  modules)
    mkdir -p "$root/modules"
    cp "$3"/*.ko "$root/modules/" 2>/dev/null || true
    ;;
  *) echo "initramfs.sh: unknown kind $kind" >&2; exit 2 ;;
esac
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null) > "$out.tmp"
mv "$out.tmp" "$out"
