/* SPDX-License-Identifier: Apache-2.0 */
/*
 * accel.h - user-space API of accel-device-plugin's accel core.
 *
 * The C rendering of pkg/accel/uapi.go (the source of truth; a test keeps
 * them in step). Every device has two nodes:
 *   acN          compute node: one open file at a time (a second open()
 *                fails with EBUSY until the holder's last descriptor closes)
 *   acN_monitor  monitor node: any number of readers; read() returns a
 *                one-line summary
 * Both answer ACCEL_IOCTL_INFO. Command numbers ACCEL_DRIVER_CMD_BASE up to
 * ACCEL_DRIVER_CMD_END belong to the device's driver, and each driver
 * declares its own in its <driver>_accel.h (fakedev: fakedev_accel.h), as
 * kernel accel drivers do. All integers are little-endian; strings are
 * UTF-8, NUL-terminated within their fixed fields (a long one is cut at a
 * character boundary). Readers should refuse a field without its NUL and a
 * status they do not know.
 *
 * Example:
 *   struct accel_info info;
 *   int fd = open("/dev/accel/ac0_monitor", O_RDONLY);
 *   if (ioctl(fd, ACCEL_IOCTL_INFO, &info) == 0 && info.version >= 1)
 *       printf("%s %s\n", info.name, info.serial);
 *
 * Mapping device memory: a driver's buffers live in the compute node's
 * mapping space, from ACCEL_MAP_BASE up to the compute node's file size
 * (the space is larger than memory_total: room for fragmentation),
 * page-aligned; a driver command gives a buffer's offset and mmap(...,
 * MAP_SHARED, fd, offset) of the compute node reaches its memory. The
 * simulator serves it through the page cache (FUSE): mmap itself always
 * succeeds, and an access to an offset outside the client's buffers gets
 * SIGBUS (reads) or EIO from msync/fsync/close (writes). Buffer sizes
 * count in whole pages in memory_used. A job's submit makes the device
 * see what the CPU wrote through a mapping, and its completion makes the
 * CPU see what the device wrote: no msync is needed.
 *
 * errno: EBUSY compute node held; EMFILE too many open monitor files (per
 * process and device, or per device); EAGAIN device resetting; EPERM device
 * malfunctioning / needs reset, or driver command on the monitor node;
 * ENODEV device removed; ENOTTY unknown command; EINVAL malformed argument.
 */
#ifndef ACCEL_UAPI_H
#define ACCEL_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define ACCEL_IOCTL_BASE         0xAC
#define ACCEL_DRIVER_CMD_BASE    0x40 /* 0x40-0x9F: driver-specific, compute node only */
#define ACCEL_DRIVER_CMD_END     0xA0

#define ACCEL_MAP_BASE           0x100000000ULL /* first buffer offset */

#define ACCEL_INFO_VERSION       2 /* 2: jobs_completed, busy_ns */
#define ACCEL_INFO_FLAG_COMPUTE_IN_USE (1u << 0)

enum accel_status {
	ACCEL_STATUS_OPERATIONAL = 0,
	ACCEL_STATUS_IN_RESET    = 1,
	ACCEL_STATUS_MALFUNCTION = 2,
	ACCEL_STATUS_NEEDS_RESET = 3,
	ACCEL_STATUS_REMOVED     = 4,
};

struct accel_info {
	__u32 size;            /* sizeof(struct accel_info) filled: 256 */
	__u32 version;         /* ACCEL_INFO_VERSION */
	__u32 index;           /* N of acN */
	__u32 status;          /* enum accel_status */
	__u64 memory_total;    /* bytes */
	__u64 memory_used;     /* bytes */
	__s32 numa_node;       /* -1 when unknown */
	__u32 flags;           /* ACCEL_INFO_FLAG_* */
	__s32 holder_pid;      /* process holding the compute node now (opener, or a
	                        * live process that inherited it); 0 if none or unknown */
	__u32 monitor_clients; /* open files of the monitor node */
	__u32 reset_count;     /* completed resets */
	__u32 jobs_completed;  /* jobs the device finished, wrapping at 2^32 (version >= 2) */
	char  name[32];        /* "acN" */
	char  driver[32];
	char  model[64];
	char  serial[64];      /* stable identity */
	__u64 busy_ns;         /* time spent running jobs, ns (version >= 2) */
};

#define ACCEL_IOCTL_INFO _IOR(ACCEL_IOCTL_BASE, 0x00, struct accel_info)

#endif /* ACCEL_UAPI_H */
