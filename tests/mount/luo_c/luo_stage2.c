/* Stage 2: retrieve every session and file, check every byte, finish. */
#include "luo_test.h"

int main(int argc, char **argv)
{
	int dev = open("/dev/liveupdate", O_RDWR), bad = 0;

	if (dev < 0) {
		printf("open /dev/liveupdate: %s\n", strerror(errno));
		return 1;
	}
	for (int i = 1; i < argc; i++) {
		struct file_spec files[128];
		char *name = argv[i];
		int n = parse_spec(argv[i], &name, files, 128);
		int s = n < 0 ? -EINVAL : create_session(dev, name, LIVEUPDATE_IOCTL_RETRIEVE_SESSION);

		if (s < 0) {
			printf("retrieve %s: %s\n", name, strerror(-s));
			return 1;
		}
		for (int j = 0; j < n; j++) {
			struct file_spec *f = &files[j];
			int fd = retrieve_fd(s, f->token);
			struct stat st;
			unsigned char *map;

			if (fd < 0 || fstat(fd, &st)) {
				printf("retrieve %s/%llu: %s\n", name, (unsigned long long)f->token,
				       strerror(-fd));
				return 1;
			}
			if ((uint64_t)st.st_size != f->size ||
			    lseek(fd, 0, SEEK_CUR) != (off_t)(f->token * 3) ||
			    !(fcntl(fd, F_GETFD) & FD_CLOEXEC)) {
				printf("%s/%llu: size %lld pos %lld\n", name, (unsigned long long)f->token,
				       (long long)st.st_size, (long long)lseek(fd, 0, SEEK_CUR));
				bad = 1;
				continue;
			}
			map = f->size ? mmap(NULL, f->size, PROT_READ, MAP_SHARED, fd, 0) : NULL;
			if (f->size && map == MAP_FAILED)
				return 1;
			for (uint64_t o = 0; o < f->size; o++) {
				unsigned char want = data_at(f, o) ? pattern(f->token, o) : 0;

				if (map[o] != want) {
					printf("%s/%llu: byte %llu is %u, not %u\n", name,
					       (unsigned long long)f->token, (unsigned long long)o,
					       map[o], want);
					bad = 1;
					break;
				}
			}
			if (f->size)
				munmap(map, f->size);
			close(fd);
		}
		if (finish_session(s)) {
			printf("finish %s: %s\n", name, strerror(errno));
			bad = 1;
		}
		close(s);
	}
	printf(bad ? "FAIL\n" : "ok\n");
	return bad;
}
