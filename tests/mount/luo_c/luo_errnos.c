/*
 * Every errno of spec kho-mainline.md §12 through the preload library: prints one line
 * "<case> <errno name>" per case. "before": on a fresh kernel (leaves session "e" with
 * token 1 open for a kexec when given "keep"); "after": on the kernel after the kexec.
 */
#include "luo_test.h"
#include <signal.h>

static const char *name_of(int err)
{
	switch (err) {
	case 0: return "0";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EIO: return "EIO";
	case EBADF: return "EBADF";
	case ENOMEM: return "ENOMEM";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case ENOSPC: return "ENOSPC";
	case E2BIG: return "E2BIG";
	default: return strerror(err);
	}
}

static void report(const char *what, int ret)
{
	printf("%s %s\n", what, name_of(ret < 0 ? (ret == -1 ? errno : -ret) : 0));
}

static int raw(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg) ? -errno : 0;
}

static int before(int keep)
{
	struct liveupdate_ioctl_create_session c = { .size = sizeof(c) };
	unsigned char big[96] = { 0 };
	int dev = open("/dev/liveupdate", O_RDWR), s, fd, dir, path, sessions[820];

	report("open", dev);
	report("open-again", open("/dev/liveupdate", O_RDWR));
	s = create_session(dev, "e", LIVEUPDATE_IOCTL_CREATE_SESSION);
	report("create", s);
	report("create-duplicate", create_session(dev, "e", LIVEUPDATE_IOCTL_CREATE_SESSION));
	report("retrieve-unknown", create_session(dev, "e", LIVEUPDATE_IOCTL_RETRIEVE_SESSION));
	report("nr-outside-table", raw(dev, _IO(0xBA, 0x02), &c));
	report("session-nr-on-device", raw(dev, _IO(0xBA, 0x40), &c));
	report("unknown-command", raw(dev, _IOW(0xBA, 0x00, struct liveupdate_ioctl_create_session), &c));
	c.size = 71;
	report("size-too-small", raw(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &c));
	memcpy(big, &c, sizeof(c));
	*(uint32_t *)big = sizeof(big);
	big[90] = 1;
	report("nonzero-tail", raw(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, big));
	report("bad-pointer", raw(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, (void *)8));
	report("null-pointer", raw(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, NULL));

	fd = memfd_create("e", 0);
	if (write(fd, "kept", 4) != 4)
		return 1;
	report("preserve", preserve_fd(s, fd, 1));
	report("preserve-token-again", preserve_fd(s, fd, 1));
	report("preserve-bad-fd", preserve_fd(s, 9999, 2));
	report("preserve-dev-null", preserve_fd(s, open("/dev/null", O_RDONLY), 2));
	dir = open("/", O_RDONLY | O_DIRECTORY);
	report("preserve-directory", preserve_fd(s, dir, 2));
	path = open("/", O_PATH);
	report("preserve-o-path", preserve_fd(s, path, 2));
	report("retrieve-fd-outgoing", retrieve_fd(s, 1));
	report("finish-outgoing", finish_session(s));
	report("get-name", raw(s, _IO(0xBA, 0x43), big));
	report("tcgets-on-session", raw(s, TCGETS, big));
	for (uint64_t t = 2; t <= 128; t++)
		if (preserve_fd(s, memfd_create("f", MFD_CLOEXEC), t))
			report("preserve-128", -errno);
	report("preserve-129th", preserve_fd(s, memfd_create("f", MFD_CLOEXEC), 129));

	/* 819 sessions fill the 16-page array: the 820th is ENOMEM */
	for (int i = 0; i < 818; i++) {
		char name[16];

		snprintf(name, sizeof(name), "cap%d", i);
		sessions[i] = create_session(dev, name, LIVEUPDATE_IOCTL_CREATE_SESSION);
		if (sessions[i] < 0) {
			report("capacity", sessions[i]);
			break;
		}
	}
	report("session-820", create_session(dev, "one-too-many", LIVEUPDATE_IOCTL_CREATE_SESSION));
	for (int i = 0; i < 818; i++)
		close(sessions[i]);
	report("session-after-close", create_session(dev, "one-too-many", LIVEUPDATE_IOCTL_CREATE_SESSION));
	close(dev);
	report("reopen", dev = open("/dev/liveupdate", O_RDWR));
	close(dev);
	if (keep) {
		printf("ready\n");
		fflush(stdout);
		pause(); /* keep session "e" open until the kexec kills us */
	}
	return 0;
}

static int after(void)
{
	int dev = open("/dev/liveupdate", O_RDWR), s, fd;
	char buf[8] = { 0 };

	report("open", dev);
	s = create_session(dev, "e", LIVEUPDATE_IOCTL_RETRIEVE_SESSION);
	report("retrieve", s);
	report("retrieve-again", create_session(dev, "e", LIVEUPDATE_IOCTL_RETRIEVE_SESSION));
	report("retrieve-fd-unknown", retrieve_fd(s, 4242));
	report("preserve-incoming", preserve_fd(s, memfd_create("x", 0), 5));
	fd = retrieve_fd(s, 1);
	report("retrieve-fd", fd);
	report("read-back", pread(fd, buf, 4, 0) == 4 && !memcmp(buf, "kept", 4) ? 0 : -EIO);
	report("finish", finish_session(s));
	report("retrieve-fd-after-finish", retrieve_fd(s, 1));
	close(s);
	report("retrieve-after-close", create_session(dev, "e", LIVEUPDATE_IOCTL_RETRIEVE_SESSION));
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "after"))
		return after();
	return before(argc > 2 && !strcmp(argv[2], "keep"));
}
