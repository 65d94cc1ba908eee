/* info.c - reads a device's info through the accel core uAPI (accel.h
 * alone), as any C program would. Usage: info PATH   prints key=value lines;
 *               info --layout  prints the struct layout and ioctl numbers. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "accel.h"

/* The core header declares no driver's commands: those are in each
 * driver's <driver>_accel.h. */
#if defined(FAKEDEV_IOCTL_MEM_ALLOC) || defined(FAKEDEV_IOCTL_MEM_FREE)
#error "accel.h declares fakedev commands; they belong in fakedev_accel.h"
#endif

#define OFF(f) printf(#f "=%zu\n", offsetof(struct accel_info, f))

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--layout") == 0) {
		printf("sizeof=%zu\n", sizeof(struct accel_info));
		OFF(size); OFF(version); OFF(index); OFF(status); OFF(memory_total);
		OFF(memory_used); OFF(numa_node); OFF(flags); OFF(holder_pid);
		OFF(monitor_clients); OFF(reset_count); OFF(jobs_completed); OFF(busy_ns); OFF(name); OFF(driver);
		OFF(model); OFF(serial);
		printf("ACCEL_IOCTL_INFO=%#lx\n", (unsigned long)ACCEL_IOCTL_INFO);
		printf("ACCEL_IOCTL_BASE=%#x\n", ACCEL_IOCTL_BASE);
		printf("ACCEL_DRIVER_CMD_BASE=%#x\n", ACCEL_DRIVER_CMD_BASE);
		printf("ACCEL_DRIVER_CMD_END=%#x\n", ACCEL_DRIVER_CMD_END);
		printf("ACCEL_INFO_VERSION=%d\n", ACCEL_INFO_VERSION);
		printf("ACCEL_INFO_FLAG_COMPUTE_IN_USE=%#x\n", ACCEL_INFO_FLAG_COMPUTE_IN_USE);
		printf("ACCEL_STATUS_OPERATIONAL=%d\nACCEL_STATUS_IN_RESET=%d\nACCEL_STATUS_MALFUNCTION=%d\n"
		       "ACCEL_STATUS_NEEDS_RESET=%d\nACCEL_STATUS_REMOVED=%d\n",
		       ACCEL_STATUS_OPERATIONAL, ACCEL_STATUS_IN_RESET, ACCEL_STATUS_MALFUNCTION,
		       ACCEL_STATUS_NEEDS_RESET, ACCEL_STATUS_REMOVED);
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: %s PATH | --layout\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	struct accel_info info;
	memset(&info, 0, sizeof(info));
	if (ioctl(fd, ACCEL_IOCTL_INFO, &info) != 0) {
		fprintf(stderr, "ACCEL_IOCTL_INFO: %s\n", strerror(errno));
		return 1;
	}
	printf("size=%u\nversion=%u\nname=%s\nserial=%s\ndriver=%s\nmodel=%s\n",
	       info.size, info.version, info.name, info.serial, info.driver, info.model);
	printf("status=%u\nindex=%u\nmemory_total=%llu\nnuma_node=%d\ncompute_in_use=%u\nholder_pid=%d\nmonitor_clients=%u\n",
	       info.status, info.index, (unsigned long long)info.memory_total, info.numa_node,
	       info.flags & ACCEL_INFO_FLAG_COMPUTE_IN_USE, info.holder_pid, info.monitor_clients);
	close(fd);
	return 0;
}
