# A scale too large to reserve: the lowmem area fails, KHO is disabled (no kho/ in debugfs),
# reserve_mem still lists its region, and the kexec carries no handover.
# cmdline: console=ttyS0 kho=on kho_scratch=4294967295% reserve_mem=4M:4096:log panic=-1
### stage1
tree
show "$DBG/memblock/reserve_mem_param"
### stage2
tree
