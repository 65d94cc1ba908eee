/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fakedev_accel.h - user-space API of accel-device-plugin's fakedev driver
 * (simulated devices).
 *
 * The C rendering of pkg/fakedev/uapi.go (the source of truth; a test keeps
 * them in step). The core API (struct accel_info, ACCEL_IOCTL_INFO, the
 * driver command range) is in accel.h, included here. These commands are
 * accepted on the compute node (acN) only; all integers are little-endian.
 *
 * Example:
 *   struct fakedev_mem_alloc alloc = { .size = 1 << 20 };
 *   int fd = open("/dev/accel/ac0", O_RDWR);
 *   if (ioctl(fd, FAKEDEV_IOCTL_MEM_ALLOC, &alloc) == 0) {
 *       struct fakedev_mem_free req = { .handle = alloc.handle };
 *       ioctl(fd, FAKEDEV_IOCTL_MEM_FREE, &req);
 *   }
 *
 * errno (besides accel.h's): MEM_ALLOC: ENOMEM does not fit, EINVAL size 0,
 * ENOSPC the client already holds its limit of allocations; MEM_FREE:
 * EINVAL handle the client does not own. A client's allocations are freed
 * when its compute file is released.
 */
#ifndef FAKEDEV_ACCEL_UAPI_H
#define FAKEDEV_ACCEL_UAPI_H

#include "accel.h"

/* Command numbers, relative to ACCEL_DRIVER_CMD_BASE. */
#define FAKEDEV_MEM_ALLOC 0x00
#define FAKEDEV_MEM_FREE  0x01

struct fakedev_mem_alloc {
	__u64 size;   /* in: bytes */
	__u64 handle; /* out */
};

struct fakedev_mem_free {
	__u64 handle; /* from FAKEDEV_IOCTL_MEM_ALLOC */
};

#define FAKEDEV_IOCTL_MEM_ALLOC _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKEDEV_MEM_ALLOC, struct fakedev_mem_alloc)
#define FAKEDEV_IOCTL_MEM_FREE  _IOW(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKEDEV_MEM_FREE, struct fakedev_mem_free)

#endif /* FAKEDEV_ACCEL_UAPI_H */
