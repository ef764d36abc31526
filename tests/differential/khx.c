/* khx: the differential harness's helper, the same program on both sides (a real kernel in
 * QEMU, where it is linked statically into the initramfs, and a kho-fs mount on the host).
 *
 *   khx show PATH                 the file's text, one "| line$" per line (cat -A style),
 *                                 or "err NAME" (errno name of open/read)
 *   khx hex PATH                  the file's bytes in lower-case hex, or "err NAME"
 *   khx u64 PATH NODE PROP        a native u64 property of an FDT file, in hex ("none")
 *   khx fill MEM ADDR LEN SEED    write LEN pattern bytes at physical ADDR through MEM
 *   khx check MEM ADDR LEN SEED   "equal" or "differ at OFFSET" (or "err NAME")
 *   khx kpageflags FILE ADDR LEN  real kernel: "free N used N other N" over the pages
 *   khx reserved FILE ADDR LEN    kho-fs: "covered" / "not covered" by a memblock listing
 *   khx find PATH HEX             offset of the first occurrence of the bytes, or "none"
 *   khx patch PATH OFFSET HEX     one pwrite(2) of the bytes at OFFSET: "ok N" or "err NAME"
 * Addresses and lengths are parsed with strtoull base 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned char buf[1 << 20];

static int slurp(const char *path, size_t *len) {
	int fd = open(path, O_RDONLY);
	if (fd < 0) { printf("err %s\n", strerrorname_np(errno)); return -1; }
	size_t n = 0;
	for (;;) {
		ssize_t r = read(fd, buf + n, sizeof(buf) - n);
		if (r < 0) { printf("err %s\n", strerrorname_np(errno)); close(fd); return -1; }
		if (r == 0 || n + r == sizeof(buf)) { n += r; break; }
		n += r;
	}
	close(fd);
	*len = n;
	return 0;
}

static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

static uint64_t pattern(uint64_t *s) { /* xorshift64* */
	*s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1DULL;
}

static int show(const char *path) {
	size_t n, i;
	if (slurp(path, &n)) return 0;
	int open_line = 0;
	for (i = 0; i < n; i++) {
		unsigned c = buf[i];
		if (!open_line) { fputs("| ", stdout); open_line = 1; }
		if (c == '\n') { fputs("$\n", stdout); open_line = 0; }
		else if (c == '\t') fputs("^I", stdout);
		else if (c < 32 || c == 127) printf("^%c", c ^ 0x40);
		else if (c > 127) printf("M-%02x", c);
		else putchar(c);
	}
	if (open_line) fputs("\n", stdout);
	printf("end %zu\n", n);
	return 0;
}

static int hex(const char *path) {
	size_t n, i;
	if (slurp(path, &n)) return 0;
	for (i = 0; i < n; i++) printf("%02x", buf[i]);
	printf("\n");
	return 0;
}

/* a native u64 property of NODE (a path with one level, "/" or "/name") of an FDT file */
static int u64(const char *path, const char *node, const char *prop) {
	size_t n;
	if (slurp(path, &n)) return 0;
	if (n < 40 || be32(buf) != 0xd00dfeed) { printf("none\n"); return 0; }
	uint32_t st = be32(buf + 8), strs = be32(buf + 12);
	size_t p = st;
	int depth = 0, in_node = 0;
	const char *want = node[0] == '/' ? node + 1 : node;
	while (p + 4 <= n) {
		uint32_t tok = be32(buf + p); p += 4;
		if (tok == 1) { /* BEGIN_NODE */
			const char *name = (const char *)buf + p;
			size_t l = strnlen(name, n - p);
			depth++;
			in_node = (depth == 1 && !*want) || (depth == 2 && !strcmp(name, want));
			p += (l + 4) & ~3u;
		} else if (tok == 2) { depth--; in_node = depth == 1 && !*want; }
		else if (tok == 3) {
			if (p + 8 > n) break;
			uint32_t len = be32(buf + p), off = be32(buf + p + 4);
			p += 8;
			if (in_node && strs + off < n && !strcmp((char *)buf + strs + off, prop) && len == 8 && p + 8 <= n) {
				uint64_t v; memcpy(&v, buf + p, 8);
				printf("0x%llx\n", (unsigned long long)v);
				return 0;
			}
			p += (len + 3) & ~3u;
		} else if (tok == 4) continue;
		else break;
	}
	printf("none\n");
	return 0;
}

static int fill_check(int check, const char *mem, uint64_t addr, uint64_t len, uint64_t seed) {
	int fd = open(mem, check ? O_RDONLY : O_RDWR);
	if (fd < 0) { printf("err %s\n", strerrorname_np(errno)); return 0; }
	uint64_t s = seed | 1, done = 0;
	while (done < len) {
		size_t chunk = len - done > sizeof(buf) ? sizeof(buf) : len - done;
		unsigned char want[sizeof(buf)];
		for (size_t i = 0; i < chunk; i += 8) { uint64_t v = pattern(&s); memcpy(want + i, &v, chunk - i < 8 ? chunk - i : 8); }
		if (check) {
			ssize_t r = pread(fd, buf, chunk, addr + done);
			if (r != (ssize_t)chunk) { printf("err %s\n", r < 0 ? strerrorname_np(errno) : "short"); return 0; }
			for (size_t i = 0; i < chunk; i++)
				if (buf[i] != want[i]) { printf("differ at %llu\n", (unsigned long long)(done + i)); return 0; }
		} else {
			ssize_t r = pwrite(fd, want, chunk, addr + done);
			if (r != (ssize_t)chunk) { printf("err %s\n", r < 0 ? strerrorname_np(errno) : "short"); return 0; }
		}
		done += chunk;
	}
	printf(check ? "equal\n" : "written\n");
	close(fd);
	return 0;
}

/* /proc/kpageflags: bit 10 BUDDY (free); LRU 5, SLAB 7, ANON 12, ... mean in use */
static int kpageflags(const char *path, uint64_t addr, uint64_t len) {
	int fd = open(path, O_RDONLY);
	if (fd < 0) { printf("err %s\n", strerrorname_np(errno)); return 0; }
	uint64_t free_ = 0, used = 0, other = 0;
	for (uint64_t pfn = addr >> 12; pfn < (addr + len + 4095) >> 12; pfn++) {
		uint64_t f;
		if (pread(fd, &f, 8, pfn * 8) != 8) { printf("err %s\n", strerrorname_np(errno)); return 0; }
		if (f & (1ULL << 10)) free_++;
		else if (f & ((1ULL << 5) | (1ULL << 7) | (1ULL << 12) | (1ULL << 11) | (1ULL << 4))) used++;
		else other++;
	}
	printf("free %llu used %llu other %llu\n", (unsigned long long)free_, (unsigned long long)used, (unsigned long long)other);
	return 0;
}

/* a memblock debugfs listing ("   0: 0x..0x.. node FLAGS"): is [addr, addr+len) covered? */
static int reserved(const char *path, uint64_t addr, uint64_t len) {
	FILE *f = fopen(path, "r");
	if (!f) { printf("err %s\n", strerrorname_np(errno)); return 0; }
	char line[256];
	uint64_t at = addr, end = addr + len;
	while (at < end && fgets(line, sizeof(line), f)) {
		unsigned long long a, b;
		char *p = strchr(line, ':');
		if (!p || sscanf(p + 1, " %llx..%llx", &a, &b) != 2) continue;
		if (a <= at && at <= b) at = b + 1;
	}
	fclose(f);
	printf(at >= end ? "covered\n" : "not covered\n");
	return 0;
}

static size_t unhex(const char *h, unsigned char *out, size_t max) {
	size_t n = 0;
	for (; h[0] && h[1] && n < max; h += 2) { char b[3] = {h[0], h[1], 0}; out[n++] = strtoul(b, 0, 16); }
	return n;
}

static int find(const char *path, const char *h) {
	unsigned char pat[256];
	size_t n, m = unhex(h, pat, sizeof(pat));
	if (slurp(path, &n)) return 0;
	for (size_t i = 0; m && i + m <= n; i++)
		if (!memcmp(buf + i, pat, m)) { printf("%zu\n", i); return 0; }
	printf("none\n");
	return 0;
}

static int patch(const char *path, long long off, const char *h) {
	unsigned char data[256];
	size_t m = unhex(h, data, sizeof(data));
	int fd = open(path, O_WRONLY);
	if (fd < 0) { printf("open-err %s\n", strerrorname_np(errno)); return 0; }
	ssize_t r = pwrite(fd, data, m, off);
	if (r < 0) printf("err %s\n", strerrorname_np(errno)); else printf("ok %zd\n", r);
	close(fd);
	return 0;
}

int main(int argc, char **argv) {
	if (argc >= 3 && !strcmp(argv[1], "show")) return show(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "hex")) return hex(argv[2]);
	if (argc >= 5 && !strcmp(argv[1], "u64")) return u64(argv[2], argv[3], argv[4]);
	if (argc >= 6 && (!strcmp(argv[1], "fill") || !strcmp(argv[1], "check")))
		return fill_check(!strcmp(argv[1], "check"), argv[2], strtoull(argv[3], 0, 0),
				  strtoull(argv[4], 0, 0), strtoull(argv[5], 0, 0));
	if (argc >= 5 && !strcmp(argv[1], "kpageflags")) return kpageflags(argv[2], strtoull(argv[3], 0, 0), strtoull(argv[4], 0, 0));
	if (argc >= 5 && !strcmp(argv[1], "reserved")) return reserved(argv[2], strtoull(argv[3], 0, 0), strtoull(argv[4], 0, 0));
	if (argc >= 4 && !strcmp(argv[1], "find")) return find(argv[2], argv[3]);
	if (argc >= 5 && !strcmp(argv[1], "patch")) return patch(argv[2], strtoll(argv[3], 0, 0), argv[4]);
	fprintf(stderr, "usage: khx show|hex|u64|fill|check|kpageflags|reserved|find|patch ...\n");
	return 2;
}
