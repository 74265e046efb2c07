#!/bin/bash
# Boot one kernel with one initramfs under qemu (TCG: this machine has no vmx) and copy the serial
# console to LOG. Bounded by a timeout; a guest that never powers off is killed and reported.
# usage: kernels/boot.sh VMLINUZ INITRD LOG [TIMEOUT_SECONDS]
set -uo pipefail
vmlinuz=$1; initrd=$2; log=$3; limit=${4:-120}
timeout --kill-after=5 "$limit" qemu-system-x86_64 -accel tcg -cpu max -m 256 -smp 1 \
  -nodefaults -display none -no-reboot -serial stdio \
  -kernel "$vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 panic=-1 quiet loglevel=1" </dev/null >"$log" 2>&1
rc=$?
if [[ $rc == 124 || $rc == 137 ]]; then echo "BOOT	timeout after ${limit}s" >>"$log"; fi
exit $rc
