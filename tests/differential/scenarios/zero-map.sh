# The root's preserved-memory-map set to 0 (its 8-byte value after the property header
# "len 8, nameoff 0"): 7.2 refuses it without a message of its own, only "disabling KHO
# revival".
# cmdline: console=ttyS0 kho=on reserve_mem=16M:4096:oops panic=-1
### stage1
patch_blob "$K/out/fdt" 000000030000000800000000 0000000000000000 12
### stage2
tree
