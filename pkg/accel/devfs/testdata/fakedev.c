/* fakedev.c - uses the fakedev driver's commands through fakedev_accel.h
 * alone (which brings in accel.h), as any C program would.
 * Usage: fakedev --layout   prints the structs' layout, an encoded example
 *                           of each and the ioctl numbers;
 *        fakedev PATH SIZE  on compute node PATH: allocates SIZE bytes,
 *                           reads memory_used, frees the allocation, then
 *                           frees it again; prints key=value lines. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "fakedev_accel.h"

static void hex(const char *key, const void *p, size_t n)
{
	const unsigned char *b = p;
	printf("%s=", key);
	for (size_t i = 0; i < n; i++)
		printf("%02x", b[i]);
	printf("\n");
}

static const char *errname(int e)
{
	switch (e) {
	case 0: return "0";
	case EINVAL: return "EINVAL";
	case ENOMEM: return "ENOMEM";
	case ENOSPC: return "ENOSPC";
	case EPERM: return "EPERM";
	case ENOTTY: return "ENOTTY";
	default: return strerror(e);
	}
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--layout") == 0) {
		printf("sizeof_mem_alloc=%zu\n", sizeof(struct fakedev_mem_alloc));
		printf("mem_alloc.size=%zu\n", offsetof(struct fakedev_mem_alloc, size));
		printf("mem_alloc.handle=%zu\n", offsetof(struct fakedev_mem_alloc, handle));
		printf("sizeof_mem_free=%zu\n", sizeof(struct fakedev_mem_free));
		printf("mem_free.handle=%zu\n", offsetof(struct fakedev_mem_free, handle));
		struct fakedev_mem_alloc a = { .size = 0x0102030405060708ull, .handle = 0x1112131415161718ull };
		struct fakedev_mem_free f = { .handle = 0x2122232425262728ull };
		hex("mem_alloc_bytes", &a, sizeof(a));
		hex("mem_free_bytes", &f, sizeof(f));
		printf("FAKEDEV_IOCTL_MEM_ALLOC=%#lx\n", (unsigned long)FAKEDEV_IOCTL_MEM_ALLOC);
		printf("FAKEDEV_IOCTL_MEM_FREE=%#lx\n", (unsigned long)FAKEDEV_IOCTL_MEM_FREE);
		return 0;
	}
	if (argc != 3) {
		fprintf(stderr, "usage: %s --layout | PATH SIZE\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	struct fakedev_mem_alloc alloc = { .size = strtoull(argv[2], NULL, 0) };
	if (ioctl(fd, FAKEDEV_IOCTL_MEM_ALLOC, &alloc) != 0) {
		fprintf(stderr, "FAKEDEV_IOCTL_MEM_ALLOC: %s\n", strerror(errno));
		return 1;
	}
	struct accel_info info;
	memset(&info, 0, sizeof(info));
	if (ioctl(fd, ACCEL_IOCTL_INFO, &info) != 0) {
		fprintf(stderr, "ACCEL_IOCTL_INFO: %s\n", strerror(errno));
		return 1;
	}
	printf("size=%llu\nhandle=%llu\nmemory_used=%llu\n", (unsigned long long)alloc.size,
	       (unsigned long long)alloc.handle, (unsigned long long)info.memory_used);
	struct fakedev_mem_free req = { .handle = alloc.handle };
	printf("free=%s\n", errname(ioctl(fd, FAKEDEV_IOCTL_MEM_FREE, &req) == 0 ? 0 : errno));
	printf("free_again=%s\n", errname(ioctl(fd, FAKEDEV_IOCTL_MEM_FREE, &req) == 0 ? 0 : errno));
	close(fd);
	return 0;
}
