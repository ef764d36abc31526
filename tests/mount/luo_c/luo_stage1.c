/* Stage 1 of the LUO two-stage flow: sessions of memfds with known bytes, kept open. */
#include "luo_test.h"
#include <signal.h>

static volatile sig_atomic_t poked;

static void on_usr1(int sig)
{
	(void)sig;
	poked = 1;
}

int main(int argc, char **argv)
{
	int dev = open("/dev/liveupdate", O_RDWR), sessions[16], nsessions = 0;

	if (dev < 0) {
		printf("open /dev/liveupdate: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 1; i < argc && nsessions < 16; i++) {
		struct file_spec files[128];
		char *name = argv[i];
		int n = parse_spec(argv[i], &name, files, 128);
		int s = n < 0 ? -EINVAL : create_session(dev, name, LIVEUPDATE_IOCTL_CREATE_SESSION);

		if (s < 0) {
			printf("session %s: %s\n", name, strerror(-s));
			return 1;
		}
		sessions[nsessions++] = s;
		for (int j = 0; j < n; j++) {
			struct file_spec *f = &files[j];
			int fd = memfd_create("stage1", MFD_CLOEXEC);
			unsigned char *buf = malloc(1 << 20);

			if (fd < 0 || !buf || ftruncate(fd, (off_t)f->size))
				return 1;
			for (uint64_t at = 0; at < f->size; at += 1 << 20) {
				uint64_t len = f->size - at < (1 << 20) ? f->size - at : (1 << 20);
				int any = 0;

				for (uint64_t k = 0; k < len; k++) {
					buf[k] = data_at(f, at + k) ? pattern(f->token, at + k) : 0;
					any |= data_at(f, at + k);
				}
				if (any && pwrite(fd, buf, len, (off_t)at) != (ssize_t)len)
					return 1;
			}
			free(buf);
			lseek(fd, (off_t)(f->token * 3), SEEK_SET);
			if (preserve_fd(s, fd, f->token)) {
				printf("preserve %s/%llu: %s\n", name, (unsigned long long)f->token,
				       strerror(errno));
				return 1;
			}
			close(fd); /* LUO holds its own reference */
		}
	}
	close(dev); /* the sessions stay: their descriptors are open */
	signal(SIGUSR1, on_usr1);
	printf("ready\n");
	fflush(stdout);
	while (!poked)
		pause();
	/* after the kexec: our descriptors belong to a kernel that is gone */
	int fd = memfd_create("late", 0);
	int err = preserve_fd(sessions[0], fd, 999);
	printf("after kexec: %s\n", err ? strerror(-err) : "success");
	fflush(stdout);
	return 0;
}
