/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fakenpu_accel.h - user-space API of accel-device-plugin's fakenpu driver:
 * a simulated DNN engine (NPU), shaped like the kernel's NPU accel drivers
 * (ivpu, amdxdna): a parameter query, buffer objects with 32-bit handles and
 * an info query for their mmap offset, and inference jobs.
 *
 * The C rendering of pkg/fakedev/npu.go (the source of truth; a test keeps
 * them in step). The core API (struct accel_info, ACCEL_IOCTL_INFO, the
 * driver command range, mapping device memory) is in accel.h, included
 * here. These commands are accepted on the compute node (acN) only; all
 * integers are little-endian. Their numbers are disjoint from fakedev's:
 * either driver's device answers the other's commands with ENOTTY.
 *
 * Example (one layer, y = relu(W x), x int8[cols], W int8[rows][cols],
 * y int32[rows]):
 *   struct fakenpu_bo_create bo = { .size = cols };
 *   ioctl(fd, FAKENPU_IOCTL_BO_CREATE, &bo);
 *   struct fakenpu_bo_info info = { .handle = bo.handle };
 *   ioctl(fd, FAKENPU_IOCTL_BO_INFO, &info);
 *   int8_t *x = mmap(NULL, info.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, info.mmap_offset);
 *   ... likewise W and y, fill x and W ...
 *   struct fakenpu_infer job = { .input = .., .weights = .., .output = .., .rows = rows, .cols = cols };
 *   ioctl(fd, FAKENPU_IOCTL_INFER, &job);
 *   struct fakenpu_wait wait = { .seq = job.seq, .timeout_ns = 1000000000 };
 *   ioctl(fd, FAKENPU_IOCTL_WAIT, &wait);   // then wait.status == 0 and y holds the answer
 *
 * errno (besides accel.h's): GET_PARAM: EINVAL unknown param; BO_CREATE:
 * EINVAL size 0 or flags, ENOMEM does not fit, ENOSPC the client holds its
 * limit of buffers; BO_INFO: ENOENT handle not held; BO_CLOSE: EINVAL handle
 * not held; INFER: EINVAL rows or cols 0 or above FAKENPU_MAX_DIM, flags, a
 * buffer too small, ENOENT handle not held, ENOSPC 64 jobs not waited for;
 * WAIT: ETIMEDOUT (wait again), EINVAL a job not submitted or already
 * waited for, or a timeout above 10 s.
 */
#ifndef FAKENPU_ACCEL_UAPI_H
#define FAKENPU_ACCEL_UAPI_H

#include "accel.h"

/* Command numbers, relative to ACCEL_DRIVER_CMD_BASE. */
#define FAKENPU_GET_PARAM 0x20
#define FAKENPU_BO_CREATE 0x21
#define FAKENPU_BO_INFO   0x22
#define FAKENPU_BO_CLOSE  0x23
#define FAKENPU_INFER     0x24
#define FAKENPU_WAIT      0x25

/* Parameters of FAKENPU_IOCTL_GET_PARAM */
#define FAKENPU_PARAM_TILES          1 /* compute tiles */
#define FAKENPU_PARAM_MACS_PER_SEC   2 /* int8 multiply-accumulates per second */
#define FAKENPU_PARAM_MAX_DIM        3 /* largest rows and cols of one inference */

#define FAKENPU_MAX_DIM 65536

struct fakenpu_get_param {
	__u32 param;  /* in: FAKENPU_PARAM_* */
	__u32 pad;
	__u64 value;  /* out */
};

struct fakenpu_bo_create {
	__u64 size;   /* in: bytes (rounded up to pages) */
	__u32 flags;  /* in: 0 */
	__u32 handle; /* out */
};

struct fakenpu_bo_info {
	__u32 handle;      /* in */
	__u32 pad;
	__u64 mmap_offset; /* out: mmap offset on the compute node */
	__u64 size;        /* out */
};

struct fakenpu_bo_close {
	__u32 handle;
	__u32 pad;
};

/* output[r] = max(0, sum over c of weights[r * cols + c] * input[c]) */
struct fakenpu_infer {
	__u32 input;   /* handle: int8[cols] */
	__u32 weights; /* handle: int8[rows * cols], row-major */
	__u32 output;  /* handle: int32[rows] */
	__u32 flags;   /* 0 */
	__u32 rows;
	__u32 cols;
	__u64 seq;     /* out: what FAKENPU_IOCTL_WAIT waits for */
};

struct fakenpu_wait {
	__u64 seq;        /* in */
	__s64 timeout_ns; /* in: 0 to 10 s */
	__s32 status;     /* out: 0, or -errno (-EIO device not operational, -ECANCELED) */
	__u32 pad;
	__u64 result;     /* out: 0 */
	__u64 run_ns;     /* out: how long the engine worked on it */
};

#define FAKENPU_IOCTL_GET_PARAM _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKENPU_GET_PARAM, struct fakenpu_get_param)
#define FAKENPU_IOCTL_BO_CREATE _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKENPU_BO_CREATE, struct fakenpu_bo_create)
#define FAKENPU_IOCTL_BO_INFO   _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKENPU_BO_INFO, struct fakenpu_bo_info)
#define FAKENPU_IOCTL_BO_CLOSE  _IOW(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKENPU_BO_CLOSE, struct fakenpu_bo_close)
#define FAKENPU_IOCTL_INFER     _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKENPU_INFER, struct fakenpu_infer)
#define FAKENPU_IOCTL_WAIT      _IOWR(ACCEL_IOCTL_BASE, ACCEL_DRIVER_CMD_BASE + FAKENPU_WAIT, struct fakenpu_wait)

#endif /* FAKENPU_ACCEL_UAPI_H */
