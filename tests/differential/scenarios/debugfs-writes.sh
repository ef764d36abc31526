# A root write(2) to every debugfs file, with the errno or the count: seq files refuse
# (EINVAL), blobs take the bytes (debugfs write_file_blob, bounded by the blob's size; each
# write here puts back the bytes that are already there, so the handover stays intact),
# finalize is absent (ENOENT), directories cannot be opened for writing (EISDIR).
# cmdline: console=ttyS0 kho=on reserve_mem=16M:4096:oops panic=-1
### stage1
write "$K/out/scratch_phys" 30
write "$K/out/scratch_len" 300a
write "$K/out/finalize" 3100
write "$DBG/memblock/reserve_mem_param" 31
write "$K/out/fdt" d00dfeed
write "$K/out/sub_fdts/kexec-metadata" "$(khx hex "$K/out/sub_fdts/kexec-metadata")0000"
write "$K/out/sub_fdts/memblock" d00dfeed
write "$K/out/sub_fdts/kho_test" d00dfeed
write "$K/out" 31
write "$K/in/fdt" d00dfeed
hexd "$K/out/sub_fdts/kexec-metadata"
### stage2
write "$K/in/fdt" d00dfeed
write "$K/in/sub_fdts/memblock" d00dfeed
write "$K/in/sub_fdts/kexec-metadata" 01
write "$K/out/sub_fdts/kexec-metadata" 01
write "$K/out/fdt" d00dfeed
write "$K/out/scratch_len" 31
hexd "$K/in/sub_fdts/kexec-metadata"
