/* Prints the drivers' uAPI layouts and numbers as key=value lines, for
 * TestDriverHeadersFromC. Both driver headers in one program: they must
 * agree with each other too. */
#include <stddef.h>
#include <stdio.h>

#include "fakedev_accel.h"
#include "fakenpu_accel.h"

#define OFF(name, type, field) printf(name "." #field "=%zu\n", offsetof(struct type, field))
#define NUM(n) printf(#n "=%#lx\n", (unsigned long)(n))
#define DEC(n) printf(#n "=%llu\n", (unsigned long long)(n))

int main(void)
{
	NUM(FAKEDEV_IOCTL_MEM_MAP); NUM(FAKEDEV_IOCTL_JOB_SUBMIT); NUM(FAKEDEV_IOCTL_JOB_WAIT);
	DEC(FAKEDEV_OP_ADD_U32); DEC(FAKEDEV_OP_CHECKSUM);
	OFF("map", fakedev_mem_map, handle); OFF("map", fakedev_mem_map, offset); OFF("map", fakedev_mem_map, size);
	OFF("job", fakedev_job, op); OFF("job", fakedev_job, flags); OFF("job", fakedev_job, src0);
	OFF("job", fakedev_job, src1); OFF("job", fakedev_job, dst); OFF("job", fakedev_job, count); OFF("job", fakedev_job, seq);
	OFF("wait", fakedev_job_wait, seq); OFF("wait", fakedev_job_wait, timeout_ns); OFF("wait", fakedev_job_wait, status);
	OFF("wait", fakedev_job_wait, result); OFF("wait", fakedev_job_wait, run_ns);
	NUM(FAKENPU_IOCTL_GET_PARAM); NUM(FAKENPU_IOCTL_BO_CREATE); NUM(FAKENPU_IOCTL_BO_INFO);
	NUM(FAKENPU_IOCTL_BO_CLOSE); NUM(FAKENPU_IOCTL_INFER); NUM(FAKENPU_IOCTL_WAIT);
	DEC(FAKENPU_PARAM_TILES); DEC(FAKENPU_PARAM_MACS_PER_SEC); DEC(FAKENPU_PARAM_MAX_DIM); DEC(FAKENPU_MAX_DIM);
	OFF("bo_create", fakenpu_bo_create, size); OFF("bo_create", fakenpu_bo_create, flags); OFF("bo_create", fakenpu_bo_create, handle);
	OFF("bo_info", fakenpu_bo_info, handle); OFF("bo_info", fakenpu_bo_info, mmap_offset); OFF("bo_info", fakenpu_bo_info, size);
	OFF("infer", fakenpu_infer, input); OFF("infer", fakenpu_infer, weights); OFF("infer", fakenpu_infer, output);
	OFF("infer", fakenpu_infer, flags); OFF("infer", fakenpu_infer, rows); OFF("infer", fakenpu_infer, cols); OFF("infer", fakenpu_infer, seq);
	DEC(ACCEL_MAP_BASE);
	/* sizes are in the ioctl numbers; the wait structs must match */
	return sizeof(struct fakedev_job_wait) == sizeof(struct fakenpu_wait) ? 0 : 1;
}
