// SPDX-License-Identifier: GPL-2.0-only
/*
 * kho-fs: /dev/liveupdate for unmodified programs (LD_PRELOAD).
 *
 * open("/dev/liveupdate", ...) connects to the socket a kho-fs daemon serves beside its
 * mount ($KHO_FS_LIVEUPDATE, set by `kho-fs run`); the descriptor returned is that
 * connection. ioctl() on it, and on the session descriptors the daemon hands out, is sent
 * to the daemon as the raw argument bytes; the daemon answers with the kernel's errno,
 * the bytes the kernel copies back and, for a new session or a retrieved file, a
 * descriptor (SCM_RIGHTS) whose number is written into the structure's fd field.
 * The message format is documented in kho_fs/luo_wire.py.
 *
 * The argument is read and written with process_vm_readv/writev on this process, so a
 * bad pointer fails with EFAULT as in the kernel instead of crashing the caller.
 * Descriptors are recognised by asking the socket who its peer is (SO_PEERCRED): the
 * daemon's sockets, however they reached this process (fork, exec, SCM_RIGHTS).
 *
 * Build: gcc -Wall -Wextra -Werror -O2 -shared -fPIC -o liveupdate_preload.so \
 *            liveupdate_preload.c -ldl -pthread
 */
#ifdef _FORTIFY_SOURCE
#undef _FORTIFY_SOURCE
#endif
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define LU_DEVICE "/dev/liveupdate"
#define LU_ENV_SOCKET "KHO_FS_LIVEUPDATE"
#define LU_ENV_PID "KHO_FS_LIVEUPDATE_PID"
#define LU_MAGIC 0x314F554Cu
#define LU_OP_OPEN 1u
#define LU_OP_IOCTL 2u
#define LU_FLAG_SIZE_FAULT 0x1u
#define LU_TAIL_ZERO 0u
#define LU_TAIL_NONZERO 1u
#define LU_TAIL_FAULT 2u
#define LU_TAIL_SHIFT 1
#define LU_NO_FD 0xFFFFFFFFu
#define LU_CAPTURE 4096u
#define LU_PRESERVE_FD 0xBA40u
#define LU_PAGE 4096u
#define LU_FIRST 128u /* bytes read at once: every LUO structure fits (the largest is 72) */

struct lu_request {
	uint32_t magic, op, cmd, size, flags, len;
	unsigned char data[LU_CAPTURE];
};

struct lu_answer {
	uint32_t magic, error, fd_at, len;
	unsigned char data[LU_CAPTURE];
};

static pthread_mutex_t lu_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t lu_daemon_pid; /* 0: not known yet */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*ioctl_fn)(int, unsigned long, ...);

static void *lu_next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static void lu_atfork_prepare(void) { pthread_mutex_lock(&lu_lock); }
static void lu_atfork_parent(void) { pthread_mutex_unlock(&lu_lock); }
static void lu_atfork_child(void) { pthread_mutex_init(&lu_lock, NULL); }

__attribute__((constructor)) static void lu_init(void)
{
	const char *pid = getenv(LU_ENV_PID);

	if (pid)
		lu_daemon_pid = (pid_t)strtol(pid, NULL, 10);
	pthread_atfork(lu_atfork_prepare, lu_atfork_parent, lu_atfork_child);
}

/* -- the caller's memory, read and written without faulting ------------------------ */

/* Copy up to n bytes at addr of this process (pid) into buf; the count before the first
 * unreadable page. */
static size_t lu_peek(pid_t pid, const void *addr, void *buf, size_t n)
{
	struct iovec local = { buf, n };
	struct iovec remote[LU_CAPTURE / LU_PAGE + 2];
	uintptr_t at = (uintptr_t)addr, end = at + n;
	int count = 0;
	ssize_t got;

	if (!n)
		return 0;
	if (end < at)
		end = UINTPTR_MAX;
	while (at < end && count < (int)(sizeof(remote) / sizeof(remote[0]))) {
		uintptr_t stop = (at | (LU_PAGE - 1)) + 1;

		if (stop > end || stop == 0)
			stop = end;
		remote[count].iov_base = (void *)at;
		remote[count].iov_len = stop - at;
		count++;
		at = stop;
	}
	got = process_vm_readv(pid, &local, 1, remote, count, 0);
	return got < 0 ? 0 : (size_t)got;
}

/* What lies in [addr, addr + n): zeros, a non-zero byte first, or a fault first. */
static uint32_t lu_scan_tail(pid_t pid, const unsigned char *addr, uint64_t n)
{
	unsigned char buf[LU_CAPTURE];

	while (n) {
		size_t want = n < sizeof(buf) ? (size_t)n : sizeof(buf);
		size_t got = lu_peek(pid, addr, buf, want);

		for (size_t i = 0; i < got; i++)
			if (buf[i])
				return LU_TAIL_NONZERO;
		if (got < want)
			return LU_TAIL_FAULT;
		addr += got;
		n -= got;
	}
	return LU_TAIL_ZERO;
}

static int lu_poke(pid_t pid, void *addr, const void *buf, size_t n)
{
	struct iovec local = { (void *)buf, n };
	struct iovec remote = { addr, n };

	if (!n)
		return 0;
	return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)n ? 0 : -1;
}

/* -- talking to the daemon --------------------------------------------------------- */

static int lu_wait(int fd, short events)
{
	struct pollfd p = { fd, events, 0 };

	while (poll(&p, 1, -1) < 0)
		if (errno != EINTR)
			return -1;
	return 0;
}

/* One request, one answer. Returns 0 or a positive errno; *new_fd gets a descriptor. */
static int lu_call(int fd, struct lu_request *req, int send_fd, struct lu_answer *ans,
		   int *new_fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { req, offsetof(struct lu_request, data) + req->len };
	struct msghdr msg = { 0 };
	struct cmsghdr *cmsg;
	ssize_t n;
	int err = 0;

	*new_fd = -1;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	if (send_fd >= 0) {
		memset(&ctl, 0, sizeof(ctl));
		msg.msg_control = ctl.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int));
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cmsg), &send_fd, sizeof(int));
	}
	pthread_mutex_lock(&lu_lock);
	while ((n = sendmsg(fd, &msg, MSG_NOSIGNAL)) < 0) {
		if (errno == EAGAIN && !lu_wait(fd, POLLOUT))
			continue;
		if (errno == EBADF && msg.msg_control) {
			/* send_fd is not an open descriptor (fd itself was checked by the
			 * caller): send none, the kernel's fget fails (EBADF from the daemon) */
			msg.msg_control = NULL;
			msg.msg_controllen = 0;
			continue;
		}
		if (errno != EINTR) {
			err = errno;
			goto out;
		}
	}
	memset(&msg, 0, sizeof(msg));
	iov.iov_base = ans;
	iov.iov_len = sizeof(*ans);
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = ctl.buf;
	msg.msg_controllen = sizeof(ctl.buf);
	while ((n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC)) < 0) {
		if (errno == EAGAIN && !lu_wait(fd, POLLIN))
			continue;
		if (errno != EINTR) {
			err = errno;
			goto out;
		}
	}
	for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
		if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int got;

			memcpy(&got, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
			if (*new_fd < 0)
				*new_fd = got;
			else
				close(got);
		}
	}
	if (n == 0) {
		err = ENODEV; /* the daemon closed its end: a descriptor of a previous boot */
	} else if ((size_t)n < offsetof(struct lu_answer, data) || ans->magic != LU_MAGIC ||
		   (size_t)n != offsetof(struct lu_answer, data) + ans->len) {
		err = EIO;
	} else if (ans->error) {
		err = (int)ans->error;
	} else if ((msg.msg_flags & MSG_CTRUNC) && *new_fd < 0 && ans->fd_at != LU_NO_FD) {
		err = EMFILE; /* the descriptor did not fit in our table */
	}
out:
	pthread_mutex_unlock(&lu_lock);
	if (err == EPIPE || err == ECONNRESET || err == ENOTCONN)
		err = ENODEV;
	if (err && *new_fd >= 0) {
		close(*new_fd);
		*new_fd = -1;
	}
	return err;
}

static pid_t lu_peer_pid(int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred))
		return 0;
	return cred.pid;
}

static int lu_connect(int cloexec)
{
	const char *path = getenv(LU_ENV_SOCKET);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd;

	if (!path || strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENOENT;
		return -1;
	}
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | (cloexec ? SOCK_CLOEXEC : 0), 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		close(fd);
		errno = ENOENT;
		return -1;
	}
	if (!lu_daemon_pid)
		lu_daemon_pid = lu_peer_pid(fd);
	return fd;
}

/* Is fd one of the daemon's descriptors (a device open or a session)? */
static int lu_is_ours(int fd)
{
	pid_t peer = lu_peer_pid(fd);

	if (!peer)
		return 0;
	if (!lu_daemon_pid) {
		int probe = lu_connect(1);

		if (probe < 0)
			return 0;
		close(probe);
	}
	return peer == lu_daemon_pid;
}

/* -- open -------------------------------------------------------------------------- */

static int lu_open_device(int flags)
{
	struct lu_request req = { LU_MAGIC, LU_OP_OPEN, (uint32_t)flags, 0, 0, 0, { 0 } };
	struct lu_answer ans;
	int fd, new_fd, err;

	fd = lu_connect(flags & O_CLOEXEC);
	if (fd < 0)
		return -1;
	err = lu_call(fd, &req, -1, &ans, &new_fd);
	if (new_fd >= 0)
		close(new_fd);
	if (err) {
		close(fd);
		errno = err == ENODEV ? ENOENT : err;
		return -1;
	}
	return fd;
}

static int lu_is_device(const char *path)
{
	return path && getenv(LU_ENV_SOCKET) && strcmp(path, LU_DEVICE) == 0;
}

#define LU_MODE(flags, mode)                                       \
	do {                                                       \
		if ((flags) & (O_CREAT | __O_TMPFILE)) {           \
			va_list ap;                                \
			va_start(ap, flags);                       \
			mode = va_arg(ap, mode_t);                 \
			va_end(ap);                                \
		}                                                  \
	} while (0)

int open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	LU_MODE(flags, mode);
	if (lu_is_device(path))
		return lu_open_device(flags);
	return ((open_fn)lu_next("open"))(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;

	LU_MODE(flags, mode);
	if (lu_is_device(path))
		return lu_open_device(flags);
	return ((open_fn)lu_next("open64"))(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;

	LU_MODE(flags, mode);
	if (lu_is_device(path))
		return lu_open_device(flags);
	return ((openat_fn)lu_next("openat"))(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;

	LU_MODE(flags, mode);
	if (lu_is_device(path))
		return lu_open_device(flags);
	return ((openat_fn)lu_next("openat64"))(dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE builds of the caller call these */
int __open_2(const char *path, int flags)
{
	return open(path, flags);
}

int __open64_2(const char *path, int flags)
{
	return open64(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	return openat(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	return openat64(dirfd, path, flags);
}

/* -- ioctl ------------------------------------------------------------------------- */

static int lu_ioctl(int fd, unsigned int cmd, void *arg)
{
	struct lu_request req = { LU_MAGIC, LU_OP_IOCTL, cmd, 0, 0, 0, { 0 } };
	struct lu_answer ans;
	pid_t pid = getpid();
	uint32_t size;
	size_t got;
	int send_fd = -1, new_fd, err;

	/* one read: the size and, for every LUO structure, all of it */
	got = lu_peek(pid, arg, req.data, LU_FIRST);
	if (got < sizeof(size)) {
		req.flags = LU_FLAG_SIZE_FAULT;
	} else {
		uint32_t want;

		memcpy(&size, req.data, sizeof(size));
		want = size < LU_CAPTURE ? size : LU_CAPTURE;
		req.size = size;
		if (want > got && got == LU_FIRST) /* more to read, and no fault so far */
			got += lu_peek(pid, (const unsigned char *)arg + got, req.data + got,
				       want - got);
		req.len = (uint32_t)(want < got ? want : got);
		if (req.len == want && size > LU_CAPTURE)
			req.flags = lu_scan_tail(pid, (const unsigned char *)arg + LU_CAPTURE,
						 (uint64_t)size - LU_CAPTURE)
				    << LU_TAIL_SHIFT;
		if (cmd == LU_PRESERVE_FD && req.len >= 8) {
			int named;

			memcpy(&named, req.data + 4, sizeof(named));
			if (named >= 0)
				send_fd = named; /* lu_call drops it if it is not open */
		}
	}
	err = lu_call(fd, &req, send_fd, &ans, &new_fd);
	if (!err && ans.len) {
		if (new_fd >= 0 && ans.fd_at != LU_NO_FD && ans.fd_at + sizeof(int) <= ans.len)
			memcpy(ans.data + ans.fd_at, &new_fd, sizeof(int));
		if (lu_poke(pid, arg, ans.data, ans.len))
			err = EFAULT;
	}
	if (err) {
		if (new_fd >= 0)
			close(new_fd);
		errno = err;
		return -1;
	}
	return 0;
}

int ioctl(int fd, unsigned long request, ...)
{
	unsigned int cmd = (unsigned int)request;
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	/* the VFS answers these for every file before the driver sees them */
	if (cmd != FIOCLEX && cmd != FIONCLEX && cmd != FIONBIO && cmd != FIOASYNC &&
	    lu_is_ours(fd)) {
		if (cmd == FIOQSIZE) {
			errno = ENOTTY;
			return -1;
		}
		return lu_ioctl(fd, cmd, arg);
	}
	return ((ioctl_fn)lu_next("ioctl"))(fd, request, arg);
}
