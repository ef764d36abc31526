# Prelude of every differential scenario stage (tests/differential/scenarios/*.sh).
# The same text runs as /stage1.sh and /stage2.sh under busybox sh in the real kernel's
# initramfs (../shared/oracle/init.sh runs them) and under busybox sh on the host against a
# kho-fs mount (scripts/differential sets the variables below to the mount's paths).
# Every line a scenario reports starts with "@@ ", so console lines of the kernel that
# slip into the serial log are never mistaken for output.
: "${SIDE:=real}"                       # real | emu
# which boot this is: the real first boot's initramfs holds /initrd2.cpio, the kexec'd one
# does not (init.sh names a second boot without a handover "stage 1" again, so the stage
# scripts ask the boot, not init.sh); the emulated side sets BOOT itself
if [ -z "$BOOT" ]; then if [ -e /initrd2.cpio ]; then BOOT=1; else BOOT=2; fi; fi
: "${DBG:=/sys/kernel/debug}"
: "${K:=$DBG/kho}"
: "${PROCDIR:=/proc}"
: "${DEVMEM:=/dev/mem}"
: "${MEMBLOCK_RESERVED:=}"              # emu: the emulator's view of memblock.reserved
if [ "$SIDE" = real ]; then
  PATH="$PATH:/"                         # khx and wr sit in the initramfs' root
  dmesg -n 1 2>/dev/null                 # keep the kernel's console quiet from here on
fi
say() { echo "@@ $*"; }
rel() { echo "${1#"$DBG"/}"; }
# every file and directory under kho/ and memblock/, with mode and size
tree() {
  find "$DBG/kho" "$DBG/memblock" 2>/dev/null | sort | while read -r f; do
    say "TREE $(stat -c '%A %s' "$f") $(rel "$f")"
  done
}
show() { for f; do say "FILE $(rel "$f")"; khx show "$f" | while IFS= read -r l; do say "$l"; done; done; }
hexd() { for f; do say "HEX $(rel "$f") $(khx hex "$f")"; done; }
blobs() {
  for f in $(find "$DBG/kho" -type f -name fdt 2>/dev/null | sort) \
           $(find "$DBG/kho" -path '*sub_fdts/*' -type f 2>/dev/null | sort); do hexd "$f"; done
}
dump() {
  tree
  show "$K/out/scratch_phys" "$K/out/scratch_len"
  [ -e "$DBG/memblock/reserve_mem_param" ] && show "$DBG/memblock/reserve_mem_param"
  blobs
}
write() { say "WRITE $(rel "$1") $2: $(wr "$1" "$2")"; }
# start of reserve_mem region $2 as recorded in the memblock blob $1
region_start() { khx u64 "$1" "/$2" start; }
fill() { say "FILL $1 $(khx fill "$DEVMEM" "$2" "$3" "$4")"; }
check() { say "CHECK $1 $(khx check "$DEVMEM" "$2" "$3" "$4")"; }
# is [start, start+size) kept from the page allocator? real: no page of it is free or in
# use (/proc/kpageflags); emu: memblock.reserved covers it
reserved() {
  if [ "$SIDE" = real ]; then say "RESERVED $1 $(khx kpageflags "$PROCDIR/kpageflags" "$2" "$3")"
  else say "RESERVED $1 $(khx reserved "$MEMBLOCK_RESERVED" "$2" "$3")"; fi
}
# replace the first occurrence of bytes OLD by NEW in blob $1 (root may patch a blob: the
# debugfs write handler), reporting where and the write's result; $4 shifts the offset
patch_blob() {
  at=$(khx find "$1" "$2")
  if [ "$at" = none ]; then say "PATCH $(rel "$1") $2: not found"; return; fi
  say "PATCH $(rel "$1") +$((at + ${4:-0})) $3: $(khx patch "$1" $((at + ${4:-0})) "$3")"
}
