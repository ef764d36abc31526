# The memblock child's blob-size renamed (its name offset 0x2f -> 0x15, "compatible"): the
# handover is accepted, but in/ skips the child ("node memblock missing or invalid blob-size
# property"), its lookup fails ("broken KHO subnode 'memblock'", "failed to retrieve FDT
# 'memblock' from KHO: -22"), the region is allocated afresh inside scratch and can then not
# be preserved ("failed to prepare memblock FDT for KHO: -22"); test_kho still restores.
# cmdline: console=ttyS0 kho=on reserve_mem=16M:4096:oops panic=-1
### stage1
say "REGION oops $(region_start "$K/out/sub_fdts/memblock" oops)"
patch_blob "$K/out/fdt" 000000080000002fd2000000 00000015 4
### stage2
tree
hexd "$K/in/fdt"
