# The recording's flow without LUO: default boot, every dump, a reserve_mem region filled
# with known bytes, test_kho (built in), kexec into the same kernel, every dump again, the
# region revived at its old address with the same bytes and reserved, test_kho restored.
# cmdline: console=ttyS0 kho=on reserve_mem=16M:4096:oops panic=-1
### stage1
dump
A=$(region_start "$K/out/sub_fdts/memblock" oops)
say "REGION oops $A"
fill oops "$A" 0x1000000 0x5eed
check oops "$A" 0x1000000 0x5eed
### stage2
dump
A=$(region_start "$K/in/sub_fdts/memblock" oops)
say "REGION oops in $A"
say "REGION oops out $(region_start "$K/out/sub_fdts/memblock" oops)"
check oops "$A" 0x1000000 0x5eed
reserved oops "$A" 0x1000000
