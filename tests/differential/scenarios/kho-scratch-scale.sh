# A scale (150 %): sizes follow the kernel's own reservations, so they are compared by
# rule (4 MiB multiples, lowmem below 4 GiB, global 0 on a 2 GiB machine).
# cmdline: console=ttyS0 kho=on kho_scratch=150% reserve_mem=4M:4096:log panic=-1
### stage1
dump
### stage2
dump
