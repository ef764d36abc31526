/* luoc: the differential harness's LUO client, the same source on both sides: linked
 * statically into the real kernel's initramfs (it opens the real /dev/liveupdate), and
 * built dynamically for a kho-fs mount, where it runs under `kho-fs run` (the preload
 * library turns open("/dev/liveupdate") and the LUO ioctls into requests to the daemon).
 *
 *   luoc OP ARG... [OP ARG...]...
 *
 * The operations run in order in one process, so sessions and files stay open from one to
 * the next; each prints one line "@@ WHAT HANDLE ...: ok" or "...: err ENAME" (the errno's
 * name). Descriptors are named by handles (words chosen by the caller) and their numbers
 * are never printed. Numbers (sizes, offsets, tokens, seeds) are parsed with strtoull
 * base 0; tokens and seals are printed in hex.
 *
 *   open H                      open("/dev/liveupdate", O_RDWR)
 *   create DEV S NAME           LIVEUPDATE_IOCTL_CREATE_SESSION: session handle S
 *   retrieve DEV S NAME         LIVEUPDATE_IOCTL_RETRIEVE_SESSION
 *   getname S                   LIVEUPDATE_SESSION_GET_NAME: the name
 *   preserve S TOKEN F          LIVEUPDATE_SESSION_PRESERVE_FD of handle F (a closed or
 *                               unknown handle passes fd -1)
 *   get S TOKEN F               LIVEUPDATE_SESSION_RETRIEVE_FD: file handle F
 *   finish S                    LIVEUPDATE_SESSION_FINISH
 *   badfinish S                 LIVEUPDATE_SESSION_FINISH with reserved = 1
 *   ioctl H NR                  _IO(0xBA, NR) with a zeroed 80-byte argument of size 80
 *   memfd F SIZE                memfd_create(F, 0) and ftruncate(SIZE)
 *   smemfd F SIZE               the same with MFD_ALLOW_SEALING
 *   openpath F PATH             open(PATH, O_RDWR)
 *   pipe F                      pipe(2): F is the read end
 *   fill F OFF LEN SEED         pwrite of LEN pattern bytes at OFF
 *   seek F POS                  lseek(POS, SEEK_SET)
 *   truncate F SIZE             ftruncate
 *   seal F SEALS                fcntl(F_ADD_SEALS)
 *   stat F                      size, position, seals, access mode, close-on-exec (not the
 *                               /proc/self/fd link: a retrieved memfd is "/ (deleted)" in
 *                               7.2, a host memfd always "/memfd:NAME (deleted)")
 *   sum F                       size and FNV-1a 64 of the bytes [0, size)
 *   check F OFF LEN SEED        "equal" or "differ at N" (N from OFF): the pattern of SEED
 *                               over [OFF, OFF+LEN) (any part of a range fill wrote)
 *   zero F OFF LEN              "zero" or "nonzero at N"
 *   same F G                    "yes" if both are the same file (st_dev, st_ino)
 *   close H                     close(2)
 *   hold                        stay alive in the background holding every descriptor
 *                               (fork; the parent prints "HOLD: ok" and exits, the child
 *                               detaches from stdio and waits until a device descriptor
 *                               hangs up -- kho-fs closes the old kernel's descriptors at
 *                               the kexec -- or an hour has passed; at once without an
 *                               open device)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* include/uapi/linux/liveupdate.h (Linux 7.2.13) */
#define LU_TYPE 0xBA
#define LU_CREATE_SESSION _IO(LU_TYPE, 0x00)
#define LU_RETRIEVE_SESSION _IO(LU_TYPE, 0x01)
#define LU_PRESERVE_FD _IO(LU_TYPE, 0x40)
#define LU_RETRIEVE_FD _IO(LU_TYPE, 0x41)
#define LU_FINISH _IO(LU_TYPE, 0x42)
#define LU_GET_NAME _IO(LU_TYPE, 0x43)
#define LU_NAME_LEN 64

struct lu_session_arg { /* create_session, retrieve_session */
	uint32_t size;
	int32_t fd;
	uint8_t name[LU_NAME_LEN];
};

struct lu_fd_arg { /* preserve_fd, retrieve_fd */
	uint32_t size;
	int32_t fd;
	uint64_t token;
};

struct lu_finish_arg {
	uint32_t size;
	uint32_t reserved;
};

struct lu_get_name_arg {
	uint32_t size;
	uint32_t reserved;
	uint8_t name[LU_NAME_LEN];
};

#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 2U
#endif

#define MAX_HANDLES 64
static struct handle {
	char name[32];
	int fd;
	int device; /* an open of /dev/liveupdate: watched by hold */
} handles[MAX_HANDLES];
static int nhandles;

static unsigned char buf[1 << 20];
static unsigned char want[1 << 20];

static struct handle *lookup(const char *name) {
	for (int i = 0; i < nhandles; i++)
		if (!strcmp(handles[i].name, name)) return &handles[i];
	return NULL;
}

static int fd_of(const char *name) {
	struct handle *h = lookup(name);
	return h ? h->fd : -1;
}

static void bind(const char *name, int fd, int device) {
	struct handle *h = lookup(name);
	if (!h) {
		if (nhandles == MAX_HANDLES) { fprintf(stderr, "luoc: too many handles\n"); exit(2); }
		h = &handles[nhandles++];
		snprintf(h->name, sizeof(h->name), "%s", name);
	}
	h->fd = fd;
	h->device = device;
}

static const char *ename(int err) {
	const char *n = strerrorname_np(err);
	return n ? n : "E?";
}

/* ": ok" or ": err ENAME" after the line's text so far */
static void result(int rc) {
	if (rc < 0) printf(": err %s\n", ename(errno));
	else printf(": ok\n");
}

static uint64_t num(const char *s) { return strtoull(s, NULL, 0); }

/* the pattern: the byte at file offset o is byte o % 8 of splitmix64(seed + o / 8), so any
 * part of a filled range can be checked on its own */
static uint64_t splitmix(uint64_t x) {
	x += 0x9E3779B97F4A7C15ULL;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
	return x ^ (x >> 31);
}

static void pattern(unsigned char *out, uint64_t seed, uint64_t at, size_t n) {
	for (size_t i = 0; i < n; i++) {
		uint64_t word = splitmix(seed + (at + i) / 8);
		out[i] = (unsigned char)(word >> (8 * ((at + i) % 8)));
	}
}

static int op_fill(const char *f, uint64_t off, uint64_t len, uint64_t seed) {
	int fd = fd_of(f);
	printf("@@ FILL %s %#llx+%#llx", f, (unsigned long long)off, (unsigned long long)len);
	for (uint64_t done = 0; done < len;) {
		size_t chunk = len - done > sizeof(want) ? sizeof(want) : len - done;
		pattern(want, seed, off + done, chunk);
		ssize_t r = pwrite(fd, want, chunk, off + done);
		if (r < 0) { result(-1); return 0; }
		if ((size_t)r != chunk) { printf(": short %zd\n", r); return 0; }
		done += chunk;
	}
	result(0);
	return 0;
}

/* compare [off, off+len) with the pattern (zero: with zeros) */
static int op_check(const char *f, uint64_t off, uint64_t len, uint64_t seed, int zero) {
	int fd = fd_of(f);
	printf("@@ %s %s %#llx+%#llx", zero ? "ZERO" : "CHECK", f, (unsigned long long)off,
	       (unsigned long long)len);
	for (uint64_t done = 0; done < len;) {
		size_t chunk = len - done > sizeof(buf) ? sizeof(buf) : len - done;
		ssize_t r = pread(fd, buf, chunk, off + done);
		if (r < 0) { result(-1); return 0; }
		if ((size_t)r != chunk) { printf(": short at %llu\n", (unsigned long long)(done + (r > 0 ? r : 0))); return 0; }
		if (zero) memset(want, 0, chunk);
		else pattern(want, seed, off + done, chunk);
		for (size_t i = 0; i < chunk; i++)
			if (buf[i] != want[i]) {
				printf(": %s at %llu\n", zero ? "nonzero" : "differ", (unsigned long long)(done + i));
				return 0;
			}
		done += chunk;
	}
	printf(zero ? ": zero\n" : ": equal\n");
	return 0;
}

static int op_sum(const char *f) {
	int fd = fd_of(f);
	struct stat st;
	printf("@@ SUM %s", f);
	if (fstat(fd, &st)) { result(-1); return 0; }
	uint64_t h = 0xcbf29ce484222325ULL;
	for (off_t at = 0; at < st.st_size;) {
		ssize_t r = pread(fd, buf, sizeof(buf), at);
		if (r < 0) { result(-1); return 0; }
		if (r == 0) break;
		for (ssize_t i = 0; i < r; i++) { h ^= buf[i]; h *= 0x100000001b3ULL; }
		at += r;
	}
	printf(" size=%lld fnv1a64=%016llx\n", (long long)st.st_size, (unsigned long long)h);
	return 0;
}

static int op_stat(const char *f) {
	int fd = fd_of(f);
	struct stat st;
	printf("@@ STAT %s", f);
	if (fstat(fd, &st)) { result(-1); return 0; }
	off_t pos = lseek(fd, 0, SEEK_CUR);
	int seals = fcntl(fd, F_GET_SEALS);
	int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
	printf(" size=%lld pos=%lld", (long long)st.st_size, (long long)pos);
	if (seals < 0) printf(" seals=%s", ename(errno));
	else printf(" seals=%#x", seals);
	printf(" mode=%s cloexec=%d\n",
	       (fl & O_ACCMODE) == O_RDWR ? "rdwr" : (fl & O_ACCMODE) == O_WRONLY ? "wronly" : "rdonly",
	       fdfl >= 0 && (fdfl & FD_CLOEXEC));
	return 0;
}

static int op_session(const char *dev, const char *s, const char *name, int retrieve) {
	struct lu_session_arg a = { .size = sizeof(a), .fd = -1 };
	strncpy((char *)a.name, name, sizeof(a.name)); /* a 64-byte name fills it, unterminated */
	printf("@@ %s %s \"%s\"", retrieve ? "RETRIEVE" : "CREATE", s, name);
	int rc = ioctl(fd_of(dev), retrieve ? LU_RETRIEVE_SESSION : LU_CREATE_SESSION, &a);
	if (!rc) bind(s, a.fd, 0);
	result(rc);
	return 0;
}

static int op_fd(const char *s, uint64_t token, const char *f, int retrieve) {
	struct lu_fd_arg a = { .size = sizeof(a), .fd = retrieve ? -1 : fd_of(f), .token = token };
	printf("@@ %s %s %#llx %s", retrieve ? "GET" : "PRESERVE", s, (unsigned long long)token, f);
	int rc = ioctl(fd_of(s), retrieve ? LU_RETRIEVE_FD : LU_PRESERVE_FD, &a);
	if (!rc && retrieve) bind(f, a.fd, 0);
	result(rc);
	return 0;
}

static int op_getname(const char *s) {
	struct lu_get_name_arg a = { .size = sizeof(a) };
	printf("@@ GETNAME %s", s);
	if (ioctl(fd_of(s), LU_GET_NAME, &a)) { result(-1); return 0; }
	printf(": \"%.*s\"\n", LU_NAME_LEN, (char *)a.name);
	return 0;
}

static void hold(void) {
	int p[2];
	char c = 0;
	fflush(stdout);
	if (pipe(p)) { printf("@@ HOLD: err %s\n", ename(errno)); exit(1); }
	pid_t pid = fork();
	if (pid < 0) { printf("@@ HOLD: err %s\n", ename(errno)); exit(1); }
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		close(p[0]);
		setsid();
		dup2(null, 0); dup2(null, 1); dup2(null, 2);
		if (null > 2) close(null);
		if (write(p[1], "x", 1) != 1) _exit(1);
		close(p[1]);
		for (int t = 0; t < 3600; t++) {
			int devices = 0;
			for (int i = 0; i < nhandles; i++) {
				if (!handles[i].device || handles[i].fd < 0) continue;
				struct pollfd pf = { .fd = handles[i].fd, .events = 0 };
				if (poll(&pf, 1, 0) == 1 && (pf.revents & (POLLHUP | POLLERR | POLLNVAL))) _exit(0);
				devices++;
			}
			if (!devices) _exit(0); /* nothing to hold */
			sleep(1);
		}
		_exit(0);
	}
	close(p[1]);
	if (read(p[0], &c, 1) != 1) { printf("@@ HOLD: err child\n"); exit(1); }
	printf("@@ HOLD: ok\n");
	exit(0);
}

#define NEED(n) do { if (i + (n) >= argc) goto usage; } while (0)

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 1; i < argc; i++) {
		const char *op = argv[i];
		if (!strcmp(op, "open")) {
			NEED(1);
			int fd = open("/dev/liveupdate", O_RDWR);
			printf("@@ OPEN %s", argv[i + 1]);
			if (fd >= 0) bind(argv[i + 1], fd, 1);
			result(fd);
			i += 1;
		} else if (!strcmp(op, "create") || !strcmp(op, "retrieve")) {
			NEED(3);
			op_session(argv[i + 1], argv[i + 2], argv[i + 3], op[0] == 'r');
			i += 3;
		} else if (!strcmp(op, "getname")) {
			NEED(1);
			op_getname(argv[i + 1]);
			i += 1;
		} else if (!strcmp(op, "preserve") || !strcmp(op, "get")) {
			NEED(3);
			op_fd(argv[i + 1], num(argv[i + 2]), argv[i + 3], op[0] == 'g');
			i += 3;
		} else if (!strcmp(op, "finish") || !strcmp(op, "badfinish")) {
			NEED(1);
			struct lu_finish_arg a = { .size = sizeof(a), .reserved = op[0] == 'b' };
			printf("@@ %s %s", op[0] == 'b' ? "FINISH(reserved=1)" : "FINISH", argv[i + 1]);
			result(ioctl(fd_of(argv[i + 1]), LU_FINISH, &a));
			i += 1;
		} else if (!strcmp(op, "ioctl")) {
			NEED(2);
			uint32_t a[20] = { sizeof(a) };
			unsigned nr = (unsigned)num(argv[i + 2]);
			printf("@@ IOCTL %s %#x", argv[i + 1], nr);
			result(ioctl(fd_of(argv[i + 1]), _IO(LU_TYPE, nr), a));
			i += 2;
		} else if (!strcmp(op, "memfd") || !strcmp(op, "smemfd")) {
			NEED(2);
			uint64_t size = num(argv[i + 2]);
			int fd = memfd_create(argv[i + 1], op[0] == 's' ? MFD_ALLOW_SEALING : 0);
			printf("@@ %s %s %#llx", op[0] == 's' ? "MEMFD(sealing)" : "MEMFD", argv[i + 1],
			       (unsigned long long)size);
			if (fd >= 0) {
				bind(argv[i + 1], fd, 0);
				if (size && ftruncate(fd, (off_t)size)) fd = -1;
			}
			result(fd);
			i += 2;
		} else if (!strcmp(op, "openpath")) {
			NEED(2);
			int fd = open(argv[i + 2], O_RDWR);
			printf("@@ OPENPATH %s %s", argv[i + 1], argv[i + 2]);
			if (fd >= 0) bind(argv[i + 1], fd, 0);
			result(fd);
			i += 2;
		} else if (!strcmp(op, "pipe")) {
			NEED(1);
			int p[2];
			int rc = pipe(p);
			printf("@@ PIPE %s", argv[i + 1]);
			if (!rc) bind(argv[i + 1], p[0], 0);
			result(rc);
			i += 1;
		} else if (!strcmp(op, "fill")) {
			NEED(4);
			op_fill(argv[i + 1], num(argv[i + 2]), num(argv[i + 3]), num(argv[i + 4]));
			i += 4;
		} else if (!strcmp(op, "seek")) {
			NEED(2);
			printf("@@ SEEK %s %#llx", argv[i + 1], (unsigned long long)num(argv[i + 2]));
			result(lseek(fd_of(argv[i + 1]), (off_t)num(argv[i + 2]), SEEK_SET) < 0 ? -1 : 0);
			i += 2;
		} else if (!strcmp(op, "truncate")) {
			NEED(2);
			printf("@@ TRUNCATE %s %#llx", argv[i + 1], (unsigned long long)num(argv[i + 2]));
			result(ftruncate(fd_of(argv[i + 1]), (off_t)num(argv[i + 2])));
			i += 2;
		} else if (!strcmp(op, "seal")) {
			NEED(2);
			printf("@@ SEAL %s %#llx", argv[i + 1], (unsigned long long)num(argv[i + 2]));
			result(fcntl(fd_of(argv[i + 1]), F_ADD_SEALS, (int)num(argv[i + 2])));
			i += 2;
		} else if (!strcmp(op, "stat")) {
			NEED(1);
			op_stat(argv[i + 1]);
			i += 1;
		} else if (!strcmp(op, "sum")) {
			NEED(1);
			op_sum(argv[i + 1]);
			i += 1;
		} else if (!strcmp(op, "check")) {
			NEED(4);
			op_check(argv[i + 1], num(argv[i + 2]), num(argv[i + 3]), num(argv[i + 4]), 0);
			i += 4;
		} else if (!strcmp(op, "zero")) {
			NEED(3);
			op_check(argv[i + 1], num(argv[i + 2]), num(argv[i + 3]), 0, 1);
			i += 3;
		} else if (!strcmp(op, "same")) {
			NEED(2);
			struct stat a, b;
			printf("@@ SAME %s %s", argv[i + 1], argv[i + 2]);
			if (fstat(fd_of(argv[i + 1]), &a) || fstat(fd_of(argv[i + 2]), &b)) result(-1);
			else printf(": %s\n", a.st_dev == b.st_dev && a.st_ino == b.st_ino ? "yes" : "no");
			i += 2;
		} else if (!strcmp(op, "close")) {
			NEED(1);
			struct handle *h = lookup(argv[i + 1]);
			printf("@@ CLOSE %s", argv[i + 1]);
			if (!h) { errno = EBADF; result(-1); }
			else { result(close(h->fd)); h->fd = -1; }
			i += 1;
		} else if (!strcmp(op, "hold")) {
			hold();
		} else {
			goto usage;
		}
	}
	return 0;
usage:
	fprintf(stderr, "luoc: bad or incomplete operation at '%s' (see tests/differential/luoc.c)\n",
		argv[argc - 1]);
	return 2;
}
