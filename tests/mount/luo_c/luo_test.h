/* The LUO uAPI (include/uapi/linux/liveupdate.h, Linux 6.19) and test helpers. */
#ifndef LUO_TEST_H
#define LUO_TEST_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LIVEUPDATE_IOCTL_TYPE 0xBA
#define LIVEUPDATE_IOCTL_CREATE_SESSION _IO(LIVEUPDATE_IOCTL_TYPE, 0x00)
#define LIVEUPDATE_IOCTL_RETRIEVE_SESSION _IO(LIVEUPDATE_IOCTL_TYPE, 0x01)
#define LIVEUPDATE_SESSION_PRESERVE_FD _IO(LIVEUPDATE_IOCTL_TYPE, 0x40)
#define LIVEUPDATE_SESSION_RETRIEVE_FD _IO(LIVEUPDATE_IOCTL_TYPE, 0x41)
#define LIVEUPDATE_SESSION_FINISH _IO(LIVEUPDATE_IOCTL_TYPE, 0x42)

struct liveupdate_ioctl_create_session {
	uint32_t size;
	int32_t fd;
	uint8_t name[64];
};

struct liveupdate_session_preserve_fd {
	uint32_t size;
	int32_t fd;
	uint64_t token;
};

struct liveupdate_session_finish {
	uint32_t size;
	uint32_t reserved;
};

static inline int create_session(int dev, const char *name, unsigned long cmd)
{
	struct liveupdate_ioctl_create_session a = { .size = sizeof(a) };

	strncpy((char *)a.name, name, sizeof(a.name) - 1);
	if (ioctl(dev, cmd, &a))
		return -errno;
	return a.fd;
}

static inline int preserve_fd(int session, int fd, uint64_t token)
{
	struct liveupdate_session_preserve_fd a = { .size = sizeof(a), .fd = fd, .token = token };

	return ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &a) ? -errno : 0;
}

static inline int retrieve_fd(int session, uint64_t token)
{
	struct liveupdate_session_preserve_fd a = { .size = sizeof(a), .fd = -1, .token = token };

	if (ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &a))
		return -errno;
	return a.fd;
}

static inline int finish_session(int session)
{
	struct liveupdate_session_finish a = { .size = sizeof(a) };

	return ioctl(session, LIVEUPDATE_SESSION_FINISH, &a) ? -errno : 0;
}

/* The byte a test file holds at offset o (holes read as zero). */
static inline unsigned char pattern(uint64_t token, uint64_t o)
{
	return (unsigned char)(token * 131 + o * 7 + (o >> 12) + 1);
}

/* spec: NAME:TOKEN=SIZE[h],TOKEN=SIZE... ; 'h': only the first and last 4 KiB are data */
struct file_spec {
	uint64_t token, size;
	int hole;
};

static inline int parse_spec(char *arg, char **name, struct file_spec *files, int max)
{
	char *colon = strchr(arg, ':'), *item, *save = NULL;
	int n = 0;

	if (!colon)
		return -1;
	*colon = '\0';
	*name = arg;
	for (item = strtok_r(colon + 1, ",", &save); item && n < max;
	     item = strtok_r(NULL, ",", &save)) {
		char *end;

		files[n].token = strtoull(item, &end, 0);
		if (*end != '=')
			return -1;
		files[n].size = strtoull(end + 1, &end, 0);
		files[n].hole = *end == 'h';
		n++;
	}
	return n;
}

static inline int data_at(const struct file_spec *f, uint64_t o)
{
	return !f->hole || o < 4096 || o + 4096 >= f->size;
}
#endif
