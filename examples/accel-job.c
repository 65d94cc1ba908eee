/* SPDX-License-Identifier: Apache-2.0 */
/*
 * accel-job: run one job on an accel device and check the device's answer.
 *
 *   accel-job [COMPUTE_NODE [SIZE_KIB]]
 *
 * Opens COMPUTE_NODE (default: /dev/accel/NAME for every NAME in
 * $ACCEL_VISIBLE_DEVICES, one after the other: what a pod given accel.io/ac
 * finds), reads its info, and by its driver:
 *   fakedev  allocates three buffers of SIZE_KIB (default 4096) each, maps
 *            them, fills two, submits a vector add into the third, waits,
 *            checks every word, then checksums the result on the device;
 *   fakenpu  maps an input vector, a weight matrix of about SIZE_KIB and an
 *            output vector, runs one fully connected layer with ReLU,
 *            waits and checks every output.
 * It prints what it did and the device's jobs and busy time, and exits 0
 * only when every device's answer is right (1 wrong or failed, 2 usage).
 *
 * Built against include/uapi only: cc -static -I include/uapi examples/accel-job.c
 */
#define _FILE_OFFSET_BITS 64 /* buffer offsets start at 4 GiB: off_t must hold them on 32-bit builds too */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fakedev_accel.h"
#include "fakenpu_accel.h"

static const char *node;

static int fail(const char *what)
{
	fprintf(stderr, "accel-job: %s: %s: %s\n", node, what, strerror(errno));
	return 1;
}

static double now(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return 0; /* CLOCK_MONOTONIC is always there on Linux; a time of 0 only misprints */
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *map(int fd, __u64 offset, __u64 size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
	return p == MAP_FAILED ? NULL : p;
}

static int report(int fd, const char *verdict, double secs)
{
	struct accel_info info;
	if (ioctl(fd, ACCEL_IOCTL_INFO, &info) != 0)
		return fail("info");
	printf("%s in %.1f ms; %s now: %u job(s) completed, busy %.1f ms, memory_used %" PRIu64 " bytes\n",
	       verdict, secs * 1e3, info.name, info.jobs_completed, info.busy_ns / 1e6, (uint64_t)info.memory_used);
	return 0;
}

static int run_fakedev(int fd, size_t kib)
{
	__u64 count = kib * 256, bytes = count * 4;
	struct fakedev_mem_alloc alloc[3] = { 0 };
	struct fakedev_mem_map mm[3] = { 0 };
	__u32 *v[3] = { NULL, NULL, NULL };
	int rc = 1;
	double secs = 0;
	for (int i = 0; i < 3; i++) {
		alloc[i] = (struct fakedev_mem_alloc){ .size = bytes };
		if (ioctl(fd, FAKEDEV_IOCTL_MEM_ALLOC, &alloc[i]) != 0) {
			alloc[i].handle = 0;
			fail("FAKEDEV_IOCTL_MEM_ALLOC");
			goto out;
		}
		mm[i] = (struct fakedev_mem_map){ .handle = alloc[i].handle };
		if (ioctl(fd, FAKEDEV_IOCTL_MEM_MAP, &mm[i]) != 0) {
			fail("FAKEDEV_IOCTL_MEM_MAP");
			goto out;
		}
		if (!(v[i] = map(fd, mm[i].offset, mm[i].size))) {
			fail("mmap");
			goto out;
		}
	}
	for (__u64 i = 0; i < count; i++) {
		v[0][i] = (__u32)i;
		v[1][i] = (__u32)(3 * i + 7);
		v[2][i] = 0xdeadbeef;
	}
	double t0 = now();
	struct fakedev_job job = { .op = FAKEDEV_OP_ADD_U32, .src0 = alloc[0].handle, .src1 = alloc[1].handle,
				   .dst = alloc[2].handle, .count = count };
	if (ioctl(fd, FAKEDEV_IOCTL_JOB_SUBMIT, &job) != 0) {
		fail("FAKEDEV_IOCTL_JOB_SUBMIT");
		goto out;
	}
	struct fakedev_job_wait wait = { .seq = job.seq, .timeout_ns = 10000000000LL };
	if (ioctl(fd, FAKEDEV_IOCTL_JOB_WAIT, &wait) != 0) {
		fail("FAKEDEV_IOCTL_JOB_WAIT");
		goto out;
	}
	secs = now() - t0;
	if (wait.status != 0) {
		errno = -wait.status;
		fail("add job");
		goto out;
	}
	__u64 sum = 0;
	for (__u64 i = 0; i < count; i++) {
		__u32 want = (__u32)(4 * i + 7);
		if (v[2][i] != want) {
			fprintf(stderr, "accel-job: %s: dst[%" PRIu64 "] = %#x, want %#x\n", node, (uint64_t)i, v[2][i], want);
			goto out;
		}
		sum += want;
	}
	struct fakedev_job ck = { .op = FAKEDEV_OP_CHECKSUM, .src0 = alloc[2].handle, .count = count };
	struct fakedev_job_wait ckw = { .timeout_ns = 10000000000LL };
	if (ioctl(fd, FAKEDEV_IOCTL_JOB_SUBMIT, &ck) != 0 || (ckw.seq = ck.seq, ioctl(fd, FAKEDEV_IOCTL_JOB_WAIT, &ckw)) != 0) {
		fail("checksum job");
		goto out;
	}
	if (ckw.status != 0 || ckw.result != sum) {
		fprintf(stderr, "accel-job: %s: device checksum %#" PRIx64 " (status %d), want %#" PRIx64 "\n",
			node, (uint64_t)ckw.result, ckw.status, (uint64_t)sum);
		goto out;
	}
	printf("fakedev: add of 2 x %" PRIu64 " words checked, checksum %#" PRIx64 " matches\n", (uint64_t)count, (uint64_t)sum);
	rc = report(fd, "ok", secs);
out:
	/* Unmapped and freed on every path: a mapping would keep the device
	 * held after close until the process exits. */
	for (int i = 0; i < 3; i++) {
		if (v[i] && munmap(v[i], mm[i].size) != 0 && rc == 0)
			rc = fail("munmap");
		struct fakedev_mem_free fr = { .handle = alloc[i].handle };
		if (alloc[i].handle && ioctl(fd, FAKEDEV_IOCTL_MEM_FREE, &fr) != 0 && rc == 0)
			rc = fail("FAKEDEV_IOCTL_MEM_FREE");
	}
	return rc;
}

/* A fakenpu buffer object of size bytes, mapped; *p stays NULL when the
 * mapping was not made, *handle 0 when the object was not created. */
static int npu_bo(int fd, __u64 size, __u32 *handle, void **p, __u64 *mapped)
{
	struct fakenpu_bo_create bo = { .size = size };
	if (ioctl(fd, FAKENPU_IOCTL_BO_CREATE, &bo) != 0)
		return fail("FAKENPU_IOCTL_BO_CREATE");
	*handle = bo.handle;
	struct fakenpu_bo_info info = { .handle = bo.handle };
	if (ioctl(fd, FAKENPU_IOCTL_BO_INFO, &info) != 0)
		return fail("FAKENPU_IOCTL_BO_INFO");
	if (!(*p = map(fd, info.mmap_offset, info.size)))
		return fail("mmap");
	*mapped = info.size;
	return 0;
}

static int run_fakenpu(int fd, size_t kib)
{
	struct fakenpu_get_param tiles = { .param = FAKENPU_PARAM_TILES };
	if (ioctl(fd, FAKENPU_IOCTL_GET_PARAM, &tiles) != 0)
		return fail("FAKENPU_IOCTL_GET_PARAM");
	__u32 cols = 1024, rows = (__u32)(kib < 4 ? 4 : kib);
	if (rows > FAKENPU_MAX_DIM)
		rows = FAKENPU_MAX_DIM;
	__u32 h[3] = { 0, 0, 0 }; /* input, weights, output */
	void *p[3] = { NULL, NULL, NULL };
	__u64 size[3] = { 0, 0, 0 };
	int rc = 1;
	if (npu_bo(fd, cols, &h[0], &p[0], &size[0]) || npu_bo(fd, (__u64)rows * cols, &h[1], &p[1], &size[1]) ||
	    npu_bo(fd, (__u64)rows * 4, &h[2], &p[2], &size[2]))
		goto out;
	int8_t *x = p[0], *w = p[1];
	int32_t *y = p[2];
	uint32_t seed = 12345;
	for (__u32 c = 0; c < cols; c++)
		x[c] = (int8_t)((seed = seed * 1103515245 + 12345) >> 24);
	for (__u64 i = 0; i < (__u64)rows * cols; i++)
		w[i] = (int8_t)((seed = seed * 1103515245 + 12345) >> 24);
	double t0 = now();
	struct fakenpu_infer job = { .input = h[0], .weights = h[1], .output = h[2], .rows = rows, .cols = cols };
	if (ioctl(fd, FAKENPU_IOCTL_INFER, &job) != 0) {
		fail("FAKENPU_IOCTL_INFER");
		goto out;
	}
	struct fakenpu_wait wait = { .seq = job.seq, .timeout_ns = 10000000000LL };
	if (ioctl(fd, FAKENPU_IOCTL_WAIT, &wait) != 0) {
		fail("FAKENPU_IOCTL_WAIT");
		goto out;
	}
	double secs = now() - t0;
	if (wait.status != 0) {
		errno = -wait.status;
		fail("inference");
		goto out;
	}
	__u32 positive = 0;
	for (__u32 r = 0; r < rows; r++) {
		int64_t acc = 0;
		for (__u32 c = 0; c < cols; c++)
			acc += (int64_t)w[(__u64)r * cols + c] * x[c];
		int32_t want = acc > 0 ? (int32_t)acc : 0;
		if (y[r] != want) {
			fprintf(stderr, "accel-job: %s: output[%u] = %d, want %d\n", node, r, y[r], want);
			goto out;
		}
		positive += want > 0;
	}
	printf("fakenpu: %llu tiles; %ux%u int8 layer with ReLU checked (%u of %u outputs positive)\n",
	       (unsigned long long)tiles.value, rows, cols, positive, rows);
	rc = report(fd, "ok", secs);
out:
	/* Unmapped and closed on every path (see run_fakedev). */
	for (int i = 0; i < 3; i++) {
		if (p[i] && munmap(p[i], size[i]) != 0 && rc == 0)
			rc = fail("munmap");
		struct fakenpu_bo_close cl = { .handle = h[i] };
		if (h[i] && ioctl(fd, FAKENPU_IOCTL_BO_CLOSE, &cl) != 0 && rc == 0)
			rc = fail("FAKENPU_IOCTL_BO_CLOSE");
	}
	return rc;
}

static int run_one(const char *path, size_t kib)
{
	node = path;
	int fd = open(node, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail("open");
	struct accel_info info;
	if (ioctl(fd, ACCEL_IOCTL_INFO, &info) != 0) {
		int rc = fail("ACCEL_IOCTL_INFO"); /* before close, which may change errno */
		close(fd);
		return rc;
	}
	int rc;
	if (info.version < 2) {
		fprintf(stderr, "accel-job: %s: info version %u has no job accounting (want 2)\n", node, info.version);
		rc = 1;
	} else {
		printf("%s: %s %s, serial %s\n", node, info.driver, info.model, info.serial);
		if (strcmp(info.driver, "fakedev") == 0)
			rc = run_fakedev(fd, kib);
		else if (strcmp(info.driver, "fakenpu") == 0)
			rc = run_fakenpu(fd, kib);
		else {
			fprintf(stderr, "accel-job: %s: driver %s has no job this example knows\n", node, info.driver);
			rc = 1;
		}
	}
	close(fd);
	return rc;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* each line in order with stderr's, in a pipe or a pod's log too */
	if (argc > 3 || (argc > 1 && argv[1][0] == '-')) {
		fprintf(stderr, "usage: accel-job [COMPUTE_NODE [SIZE_KIB]]\n");
		return 2;
	}
	size_t kib = 4096;
	if (argc > 2) {
		char *end;
		kib = strtoul(argv[2], &end, 10);
		if (*end || kib == 0 || kib > (1 << 20)) {
			fprintf(stderr, "accel-job: SIZE_KIB %s: want 1 to 1048576\n", argv[2]);
			return 2;
		}
	}
	if (argc > 1)
		return run_one(argv[1], kib);
	const char *env = getenv("ACCEL_VISIBLE_DEVICES");
	if (!env || !*env) {
		fprintf(stderr, "accel-job: no COMPUTE_NODE given and ACCEL_VISIBLE_DEVICES is empty\n");
		return 2;
	}
	int rc = 0;
	for (const char *p = env; *p;) {
		size_t n = strcspn(p, ",");
		char path[256];
		if (n == 0 || n > 64) {
			fprintf(stderr, "accel-job: ACCEL_VISIBLE_DEVICES=%s: want device names like ac0,ac2\n", env);
			return 2;
		}
		snprintf(path, sizeof(path), "/dev/accel/%.*s", (int)n, p);
		if (run_one(path, kib) != 0)
			rc = 1;
		p += n;
		if (*p == ',')
			p++;
	}
	return rc;
}
