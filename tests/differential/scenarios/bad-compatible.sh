# A handover the next kernel refuses: root patches the root FDT's compatible through the
# out/fdt blob ("kho-v4" -> "kho-v9") before the kexec. 7.2 logs the "incompatible" line and
# "disabling KHO revival" (no number); nothing is revived, test_kho saves afresh, and the
# second boot is a first boot for KHO (out/fdt, kexec-metadata count 1). Where the region is
# allocated afresh depends on the machine's layout (the real first boot has a 6.7 MiB
# initramfs at the top of RAM, the kexec'd one 3.4 MiB in scratch), not on KHO: it is not
# reported in stage 2.
# cmdline: console=ttyS0 kho=on reserve_mem=16M:4096:oops panic=-1
### stage1
say "REGION oops $(region_start "$K/out/sub_fdts/memblock" oops)"
patch_blob "$K/out/fdt" 6b686f2d7634 6b686f2d7639
### stage2
tree
hexd "$K/out/sub_fdts/kexec-metadata"
