# reserve_mem= sizes that exercise reserve_mem_param's formatter (string_get_size: 5 B with
# two decimals, 1000 B, a value just under 1 MiB that prints "1024 KiB", 1.50 MiB, 100 MiB),
# then the 7.1 parser messages: malformed, a duplicate name, no room after 8 regions, and
# sub-page regions (5 and 1000 bytes: nothing to preserve, revived by name and size).
# cmdline: console=ttyS0 kho=on reserve_mem=5:64:five reserve_mem=1000:64:thousand reserve_mem=4K:4096:page reserve_mem=1048575:64:almost reserve_mem=1536K:4096:mib reserve_mem=100M:2M:hundred reserve_mem=4M:oops reserve_mem=1M:4096:five reserve_mem=12M:4096:twelve reserve_mem=4G:4096:toobig reserve_mem=64K:4096:last reserve_mem=8K:4096:extra panic=-1
### stage1
tree
show "$DBG/memblock/reserve_mem_param"
hexd "$K/out/sub_fdts/memblock"
for r in five thousand page almost mib hundred twelve last; do
  say "REGION $r $(region_start "$K/out/sub_fdts/memblock" $r)"
done
### stage2
show "$DBG/memblock/reserve_mem_param"
hexd "$K/in/sub_fdts/memblock" "$K/out/sub_fdts/memblock"
for r in five thousand page almost mib hundred twelve last; do
  say "REGION $r $(region_start "$K/out/sub_fdts/memblock" $r)"
done
