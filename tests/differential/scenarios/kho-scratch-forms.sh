# kho_scratch= in every form on one command line (each is parsed and logged in order; the
# last accepted one wins): a scale, a scale above 2^31 (printed negative, then overridden),
# the v4 two-value form, zeros, trailing text, an over-long scale, a scale that is not a
# number, and finally 1M,1M,1M, which 7.2 rounds up to 4 MiB areas.
# cmdline: console=ttyS0 kho=on kho_scratch=150% kho_scratch=4294967295% kho_scratch=512M,256M kho_scratch=0,0,0 kho_scratch=1M,2M,3Mx kho_scratch=12345678901% kho_scratch=0x10% kho_scratch=abc% kho_scratch= kho_scratch=1M,1M,1M panic=-1
# exact: scratch_len
### stage1
tree
show "$K/out/scratch_phys" "$K/out/scratch_len"
### stage2
show "$K/out/scratch_phys" "$K/out/scratch_len"
