# KHO off (the default): no kho/ directory, memblock/reserve_mem_param still there, and a
# kexec_file_load carries nothing: the region is allocated afresh, nothing is revived.
# cmdline: console=ttyS0 reserve_mem=8M:4096:trace panic=-1
### stage1
tree
show "$DBG/memblock/reserve_mem_param"
### stage2
tree
show "$DBG/memblock/reserve_mem_param"
