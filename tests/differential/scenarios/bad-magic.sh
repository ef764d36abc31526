# The root FDT's magic patched (d00dfeed -> d00dfeee): the header check fails,
# "handover FDT (…) is invalid: -9", then "disabling KHO revival".
# cmdline: console=ttyS0 kho=on reserve_mem=16M:4096:oops panic=-1
### stage1
patch_blob "$K/out/fdt" d00dfeed d00dfeee
### stage2
tree
