# LUO's two-stage flow with several sessions and files (the client is luoc, luoc.c). Stage 1:
# four sessions (alpha, beta, one with a 63-byte name and no files, delta closed before the
# kexec), memfds of 5 MiB + 0x123 bytes, 0 bytes, 1 MiB with a hole on both sides of a
# 4 KiB write, 10000 bytes at position 4321, 8 KiB sealed against shrinking and growing;
# the errnos of a cold boot (second open EBUSY, unknown ioctl, retrieve ENOENT, duplicate
# name EEXIST, empty and 64-byte names EINVAL, duplicate token EEXIST, the same memfd in a
# second session, /dev/null and a pipe, fd -1, retrieve and finish on an outgoing session);
# after preserve a write inside the big memfd and a new position; a process keeps every
# descriptor open across the kexec, stage 1 dumps `out/sub_fdts/LUO` (luo-v5, number 1,
# no sessions before the reboot call). Stage 2: every file retrieved by token, sizes,
# positions, seals and bytes against the regenerated patterns, the incoming session's
# errnos, finish (one file never retrieved), a new outgoing session with an incoming name.
# cmdline: console=ttyS0 kho=on liveupdate=on panic=-1
### stage1
L=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_
luoc open dev open dev2 ioctl dev 0x05 retrieve dev x alpha \
  create dev a alpha create dev b beta create dev c "$L" create dev d delta \
  create dev x alpha create dev x "" create dev x "${L}X" getname a getname c \
  memfd big 0x500123 fill big 0 0x500123 0xb16 \
  memfd empty 0 \
  memfd hole 0x100000 fill hole 0x80064 0x1000 0x401e \
  memfd pos 10000 fill pos 0 10000 0x9051 seek pos 4321 \
  smemfd sealed 0x2000 fill sealed 0 0x2000 0x5ea1 seal sealed 0x6 \
  memfd spare 0x1000 fill spare 0 0x1000 0x5a \
  memfd gone 0x1000 openpath null /dev/null pipe pipe \
  preserve a 0x1 big preserve a 0x2 empty preserve a 0x1 pos \
  preserve b 0x1 hole preserve b 0x10 pos preserve b 0x11 sealed preserve b 0x12 spare \
  preserve b 0x13 big preserve b 0x14 null preserve b 0x15 pipe preserve b 0x16 nosuch \
  preserve d 0x1 gone close d get a 0x1 x finish a \
  fill big 0x1000 100 0xc4a6 seek pos 5000 \
  stat big sum big stat empty stat hole sum hole stat pos sum pos stat sealed sum sealed \
  hold
luoc open other
dump
### stage2
L=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_
dump
luoc open dev open dev2 \
  retrieve dev a alpha retrieve dev b beta retrieve dev c "$L" \
  retrieve dev x delta retrieve dev x alpha retrieve dev x nosuch \
  getname a getname b getname c \
  get a 0x1 big get a 0x1 big2 same big big2 get a 0x2 empty get a 0x3 none \
  get b 0x1 hole get b 0x10 pos get b 0x11 sealed get b 0x13 big3 \
  stat big sum big check big 0 0x1000 0xb16 check big 0x1000 100 0xc4a6 \
  check big 0x1064 0x4ff0bf 0xb16 \
  stat empty \
  stat hole sum hole zero hole 0 0x80064 check hole 0x80064 0x1000 0x401e \
  zero hole 0x81064 0x7ef9c \
  stat pos sum pos check pos 0 10000 0x9051 \
  stat sealed sum sealed check sealed 0 0x2000 0x5ea1 truncate sealed 0x1000 \
  memfd new 0x1000 preserve a 0x5 new \
  finish a finish b badfinish c finish c finish c get a 0x1 again \
  sum big close big close big2 \
  create dev n alpha getname n close a retrieve dev a2 alpha
