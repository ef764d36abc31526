# The spec's explicit example (§14 item 1): lowmem 16 MiB, global 512 MiB, 256 MiB per
# node; a handover boot keeps the inherited table and ignores its own kho_scratch=.
# cmdline: console=ttyS0 kho=on kho_scratch=16M,512M,256M panic=-1
# exact: scratch_len
### stage1
show "$K/out/scratch_phys" "$K/out/scratch_len"
### stage2
show "$K/out/scratch_phys" "$K/out/scratch_len"
