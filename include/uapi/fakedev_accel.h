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
 * Device memory is mapped through the compute node: MEM_MAP gives the
 * offset of an allocation, and
 *   void *p = mmap(NULL, map.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, map.offset);
 * reads and writes it (see accel.h, "Mapping device memory"). A job reads
 * and writes buffers by handle: JOB_SUBMIT queues it, JOB_WAIT waits for
 * it; what the CPU wrote through a mapping before the submit is what the
 * job reads, and what the job wrote is what the CPU reads after the wait.
 *
 * errno (besides accel.h's): MEM_ALLOC: ENOMEM does not fit, EINVAL size 0,
 * ENOSPC the client already holds its limit of allocations; MEM_FREE:
 * EINVAL handle the client does not hold; MEM_MAP: ENOENT handle the client
 * does not hold; JOB_SUBMIT: EINVAL unknown op, flags, count 0 or past a
 * buffer's end, ENOENT handle not held, ENOSPC 64 jobs not waited for;
 * JOB_WAIT: ETIMEDOUT not done in time (wait again), EINVAL a job not
 * submitted or already waited for, or a timeout above 10 s. A client's
 * allocations and jobs end when its compute file is released.
 */
#ifndef FAKEDEV_ACCEL_UAPI_H
#define FAKEDEV_ACCEL_UAPI_H

#include "accel.h"

/* Command numbers, relative to ACCEL_DRIVER_CMD_BASE. */
#define FAKEDEV_MEM_ALLOC  0x00
#define FAKEDEV_MEM_FREE   0x01
#define FAKEDEV_MEM_MAP    0x02
#define FAKEDEV_JOB_SUBMIT 0x03
#define FAKEDEV_JOB_WAIT   0x04

/* Job ops */
#define FAKEDEV_OP_ADD_U32  1 /* dst[i] = src0[i] + src1[i] (mod 2^32), count words */
#define FAKEDEV_OP_CHECKSUM 2 /* result = sum of src0's count words (mod 2^64); src1 = dst = 0 */

struct fakedev_mem_alloc {
	__u64 size;   /* in: bytes */
	__u64 handle; /* out */
};

struct fakedev_mem_free {
	__u64 handle; /* from FAKEDEV_IOCTL_MEM_ALLOC */
};

struct fakedev_mem_map {
	__u64 handle; /* in */
	__u64 offset; /* out: mmap offset on the compute node */
	__u64 size;   /* out: the allocation's size */
};

struct fakedev_job {
	__u32 op;     /* FAKEDEV_OP_* */
	__u32 flags;  /* 0 */
	__u64 src0;   /* handles */
	__u64 src1;
	__u64 dst;
	__u64 count;  /* 32-bit words */
	__u64 seq;    /* out: what JOB_WAIT waits for */
};

struct fakedev_job_wait {
	__u64 seq;        /* in */
	__s64 timeout_ns; /* in: 0 to 10 s */
	__s32 status;     /* out: 0, or -errno (-EIO device not operational, -ECANCELED) */
	__u32 pad;
	__u64 result;     /* out: FAKEDEV_OP_CHECKSUM's sum */
	__u64 run_ns;     /* out: how long the device worked on it */
};

#define FAKEDEV_IOCTL_MEM_ALLOC _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKEDEV_MEM_ALLOC, struct fakedev_mem_alloc)
#define FAKEDEV_IOCTL_MEM_FREE  _IOW(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKEDEV_MEM_FREE, struct fakedev_mem_free)
#define FAKEDEV_IOCTL_MEM_MAP   _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKEDEV_MEM_MAP, struct fakedev_mem_map)
#define FAKEDEV_IOCTL_JOB_SUBMIT _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKEDEV_JOB_SUBMIT, struct fakedev_job)
#define FAKEDEV_IOCTL_JOB_WAIT  _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKEDEV_JOB_WAIT, struct fakedev_job_wait)

#endif /* FAKEDEV_ACCEL_UAPI_H */
