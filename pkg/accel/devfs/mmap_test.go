package devfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/fakedev"
)

// Mappings of FUSE files are touched only in helper processes: a Go
// program that faults on a mapping its own FUSE server serves can
// deadlock (the faulting thread blocks in the kernel, the garbage
// collector's stop-the-world waits for it, and the goroutines that would
// answer the fault are stopped). Measured here: TestMmapDeviceMemory hung
// that way when it mapped the node in the test process.

// runMmapHelper implements the helper modes of the mapping tests, each
// printing key=value lines:
//
//	mmap-job PATH    three 1 MiB buffers on the fakedev device: fill two
//	                 through mappings, add them into the third on the
//	                 device, check the answer through the third's mapping
//	                 (dst=ok), map at an unaligned offset (unaligned=EINVAL),
//	                 touch offset 0 (fault0=yes when it faults),
//	                 write a page past a buffer and msync (stray=EIO)
//	mmap-fresh PATH  one 1 MiB buffer: fresh=zeros when it reads as zeros
//	mmap-write PATH  DEVFS_TEST_N rounds of: fill a 64 MiB buffer through
//	                 its mapping, msync it; prints bytes= and ns= (the
//	                 rounds' total), and checksum=ok when a device job
//	                 then sums what the last round wrote
func runMmapHelper(mode, path string) (int, bool) {
	if mode != "mmap-job" && mode != "mmap-fresh" && mode != "mmap-write" {
		return 0, false
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fmt.Println("open=" + errName(err))
		return 1, true
	}
	defer f.Close()
	fail := func(what string, err error) (int, bool) {
		fmt.Printf("error=%s: %v\n", what, err)
		return 1, true
	}
	const size = 1 << 20
	mapBuf := func() (uint64, []byte, error) {
		arg := fakedev.EncodeMemAlloc(size)
		if err := accel.Ioctl(f, fakedev.IoctlMemAlloc, arg); err != nil {
			return 0, nil, err
		}
		h := fakedev.DecodeMemAlloc(arg)
		m := fakedev.EncodeMemMap(h)
		if err := accel.Ioctl(f, fakedev.IoctlMemMap, m); err != nil {
			return 0, nil, err
		}
		off, n := fakedev.DecodeMemMap(m)
		mem, err := unix.Mmap(int(f.Fd()), int64(off), int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		return h, mem, err
	}
	if mode == "mmap-write" {
		return mmapWrite(f)
	}
	if mode == "mmap-fresh" {
		_, mem, err := mapBuf()
		if err != nil {
			return fail("map", err)
		}
		if bytes.Equal(mem, make([]byte, size)) {
			fmt.Println("fresh=zeros")
		} else {
			fmt.Println("fresh=dirty")
		}
		return 0, true
	}
	var h [3]uint64
	var mem [3][]byte
	for i := range h {
		if h[i], mem[i], err = mapBuf(); err != nil {
			return fail("map", err)
		}
	}
	for i := 0; i < size; i += 4 {
		binary.LittleEndian.PutUint32(mem[0][i:], uint32(i))
		binary.LittleEndian.PutUint32(mem[1][i:], 5)
		binary.LittleEndian.PutUint32(mem[2][i:], 0xdeadbeef) // dirty, and overwritten by the job
	}
	job := fakedev.JobArgs{Op: fakedev.OpAddU32, Src0: h[0], Src1: h[1], Dst: h[2], Count: size / 4}.Encode()
	if err := accel.Ioctl(f, fakedev.IoctlJobSubmit, job); err != nil {
		return fail("submit", err)
	}
	wait := fakedev.WaitArgs{Seq: fakedev.DecodeJobArgs(job).Seq, TimeoutNS: int64(5 * time.Second)}.Encode()
	if err := accel.Ioctl(f, fakedev.IoctlJobWait, wait); err != nil || fakedev.DecodeWaitArgs(wait).Status != 0 {
		return fail("wait", fmt.Errorf("%w, status %d", err, fakedev.DecodeWaitArgs(wait).Status))
	}
	dst := "ok"
	for i := 0; i < size; i += 4 {
		if got := binary.LittleEndian.Uint32(mem[2][i:]); got != uint32(i)+5 {
			dst = fmt.Sprintf("word %d is %#x, want %#x", i/4, got, uint32(i)+5)
			break
		}
	}
	fmt.Println("dst=" + dst)

	// Offsets are page-aligned; the kernel refuses one that is not.
	off0, _ := fakedev.DecodeMemMap(func() []byte { m := fakedev.EncodeMemMap(h[0]); _ = accel.Ioctl(f, fakedev.IoctlMemMap, m); return m }())
	if _, err := unix.Mmap(int(f.Fd()), int64(off0)+1, 4096, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		fmt.Println("unaligned=" + errName(err))
	}
	stray, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap at 0", err)
	}
	if faulted, _ := faults(stray, false); faulted {
		fmt.Println("fault0=yes")
	}
	off, _ := fakedev.DecodeMemMap(func() []byte { m := fakedev.EncodeMemMap(h[2]); _ = accel.Ioctl(f, fakedev.IoctlMemMap, m); return m }())
	past, err := unix.Mmap(int(f.Fd()), int64(off), 2*size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap past the buffer", err)
	}
	past[size+1] = 1 // the next page is no buffer's (the last buffer)
	fmt.Println("stray=" + errName(unix.Msync(past, unix.MS_SYNC)))
	return 0, true
}

// mmapWrite is the mmap-write helper mode.
func mmapWrite(f *os.File) (int, bool) {
	const size = 64 << 20
	rounds, _ := strconv.Atoi(os.Getenv("DEVFS_TEST_N"))
	arg := fakedev.EncodeMemAlloc(size)
	if err := accel.Ioctl(f, fakedev.IoctlMemAlloc, arg); err != nil {
		fmt.Println("error=alloc:", err)
		return 1, true
	}
	h := fakedev.DecodeMemAlloc(arg)
	m := fakedev.EncodeMemMap(h)
	if err := accel.Ioctl(f, fakedev.IoctlMemMap, m); err != nil {
		fmt.Println("error=map:", err)
		return 1, true
	}
	off, _ := fakedev.DecodeMemMap(m)
	mem, err := unix.Mmap(int(f.Fd()), int64(off), size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fmt.Println("error=mmap:", err)
		return 1, true
	}
	pattern := bytes.Repeat([]byte{1, 0, 0, 0}, 1<<10) // 32-bit words of 1
	start := time.Now()
	for r := range max(rounds, 1) {
		pattern[0] = byte(r + 1)
		for i := 0; i < size; i += len(pattern) {
			copy(mem[i:], pattern)
		}
		if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
			fmt.Println("error=msync:", err)
			return 1, true
		}
	}
	elapsed := time.Since(start)
	fmt.Printf("bytes=%d\nns=%d\n", int64(size)*int64(max(rounds, 1)), elapsed.Nanoseconds())
	job := fakedev.JobArgs{Op: fakedev.OpChecksum, Src0: h, Count: size / 4}.Encode()
	wait := make([]byte, 40)
	if err := accel.Ioctl(f, fakedev.IoctlJobSubmit, job); err == nil {
		copy(wait, fakedev.WaitArgs{Seq: fakedev.DecodeJobArgs(job).Seq, TimeoutNS: int64(10 * time.Second)}.Encode())
		if err := accel.Ioctl(f, fakedev.IoctlJobWait, wait); err == nil {
			words := uint64(size / 4)
			want := words + uint64(pattern[0]-1)*(words/1024) // word 0 of every pattern repeat holds the round number
			if got := fakedev.DecodeWaitArgs(wait).Result; got == want {
				fmt.Println("checksum=ok")
			} else {
				fmt.Printf("checksum=%d, want %d\n", got, want)
			}
		}
	}
	return 0, true
}

// faults reports whether reading or writing b[0] faults (SIGBUS), as an
// access to device memory the client was not given does; v is what a
// read saw, so the load is not optimised away.
func faults(b []byte, write bool) (faulted bool, v byte) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() { faulted = recover() != nil }()
	if write {
		b[0] = 1
		return false, 0
	}
	return false, b[0]
}

// runMmapClient runs the helper mode in a separate process and returns
// its key=value lines.
func runMmapClient(t *testing.T, mode, path string) map[string]string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", path)
	cmd.Env = helperEnviron(mode)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper %s: %v\n%s", mode, err, out)
	}
	kv := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

// Device memory through a real mapping of a real compute node, by a
// separate process: what it writes reaches a job without any msync, the
// job's answer reaches it after the wait, an access outside its buffers
// faults or fails, memory_used is the truth, everything is freed when it
// exits, and the next client sees none of its memory.
func TestMmapDeviceMemory(t *testing.T) {
	m := mountSim(t, 1)
	got := runMmapClient(t, "mmap-job", m.path("ac0"))
	for key, want := range map[string]string{"dst": "ok", "fault0": "yes", "stray": "errno 5 (input/output error)", "unaligned": "EINVAL"} {
		if got[key] != want {
			t.Errorf("client: %s = %q, want %q (all: %v)", key, got[key], want, got)
		}
	}
	info := infoOf(t, m.path("ac0_monitor"))
	if info.MemoryUsed != 0 || info.JobsCompleted != 1 || info.BusyTime <= 0 {
		t.Fatalf("info after the client exited: memory_used %d, %d jobs, busy %s; want 0, 1, > 0", info.MemoryUsed, info.JobsCompleted, info.BusyTime)
	}
	if got := runMmapClient(t, "mmap-fresh", m.path("ac0")); got["fresh"] != "zeros" {
		t.Fatalf("a new client's buffer at the earlier client's offset: %v, want zeros", got)
	}
}

// While a client holds buffers, the compute node's blocks are the memory
// it uses (du tells the truth about a file whose size is an address
// space), and memory_used counts whole pages.
func TestComputeNodeBlocks(t *testing.T) {
	m := mountSim(t, 1)
	f, err := os.OpenFile(m.path("ac0"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := accel.Ioctl(f, fakedev.IoctlMemAlloc, fakedev.EncodeMemAlloc(10000)); err != nil {
		t.Fatal(err)
	}
	want := 3 * accel.PageSize // 10000 bytes rounded up
	// The kernel caches attributes for the mount's attribute timeout (1 s).
	var st syscall.Stat_t
	for deadline := time.Now().Add(5 * time.Second); ; {
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if uint64(st.Blocks)*512 == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling the kernel's cache until its timeout ends
	}
	// The size is the end of the mapping space, which is far larger than
	// the 16 GiB of memory (room for first fit when it fragments).
	end := m.reg.Devices()[0].MapSpaceEnd()
	if uint64(st.Blocks)*512 != want || uint64(st.Size) != end || end <= accel.MapBase+16<<30 || infoOf(t, m.path("ac0_monitor")).MemoryUsed != want {
		t.Fatalf("compute node: %d blocks, size %d; want %d bytes in blocks and size %d, past MapBase + 16 GiB", st.Blocks, st.Size, want, end)
	}
}

// The example a user runs (examples/accel-job.c, built against
// include/uapi only) gets the right answer from each driver on one mixed
// simulator, and the jobs it ran show in the device's info.
func TestExampleAgainstEachDriver(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: install build-essential to run the C example")
	}
	bin := filepath.Join(t.TempDir(), "accel-job")
	if out, err := exec.Command(gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-I", "../../../include/uapi", "-o", bin,
		"../../../examples/accel-job.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc examples/accel-job.c: %v\n%s", err, out)
	}
	m := mountSim(t, 1)
	if _, err := m.sim.AddDriver(fakedev.NPUDriverName, 1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ node, driver, says string }{
		{"ac0", fakedev.DriverName, "checksum"},
		{"ac1", fakedev.NPUDriverName, "layer with ReLU checked"},
	} {
		cmd := exec.Command(bin, m.path(tc.node), "256")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), tc.says) {
			t.Errorf("accel-job on %s (%s): %v\n%s", tc.node, tc.driver, err, out)
			continue
		}
		info := infoOf(t, m.path(tc.node+"_monitor"))
		if info.Driver != tc.driver || info.JobsCompleted == 0 || info.BusyTime <= 0 || info.MemoryUsed != 0 {
			t.Errorf("%s after the example: %+v; want driver %s, jobs and busy time, no memory left", tc.node, info, tc.driver)
		}
	}
	// A device whose answers are wrong (silent corruption: its status
	// stays operational) fails the example, on either driver.
	for _, node := range []string{"ac0", "ac1"} {
		if err := m.sim.Inject(node, fakedev.FaultCorrupt); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, m.path(node), "4").CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), ", want ") {
			t.Errorf("accel-job on %s with wrong answers: %v, want exit 1 naming the wrong value\n%s", node, err, out)
		}
	}
	// From the environment a pod gets, as a pod would run it.
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "ACCEL_VISIBLE_DEVICES=nosuch,ac0")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "/dev/accel/nosuch") {
		t.Errorf("accel-job with ACCEL_VISIBLE_DEVICES=nosuch,ac0: %v, want a failed open of /dev/accel/nosuch\n%s", err, out)
	}
}

// The drivers' C headers agree with pkg/fakedev: struct sizes and field
// offsets, and every ioctl number.
func TestDriverHeadersFromC(t *testing.T) {
	bin := buildC(t, "layouts")
	got := runKV(t, bin)
	hex := func(v uint32) string { return fmt.Sprintf("%#x", v) }
	for key, want := range map[string]string{
		"FAKEDEV_IOCTL_MEM_MAP": hex(fakedev.IoctlMemMap), "FAKEDEV_IOCTL_JOB_SUBMIT": hex(fakedev.IoctlJobSubmit),
		"FAKEDEV_IOCTL_JOB_WAIT": hex(fakedev.IoctlJobWait),
		"FAKEDEV_OP_ADD_U32":     strconv.Itoa(fakedev.OpAddU32), "FAKEDEV_OP_CHECKSUM": strconv.Itoa(fakedev.OpChecksum),
		"job.op": "0", "job.flags": "4", "job.src0": "8", "job.src1": "16", "job.dst": "24", "job.count": "32", "job.seq": "40",
		"wait.seq": "0", "wait.timeout_ns": "8", "wait.status": "16", "wait.result": "24", "wait.run_ns": "32",
		"map.handle": "0", "map.offset": "8", "map.size": "16",
		"FAKENPU_IOCTL_GET_PARAM": hex(fakedev.IoctlNPUGetParam), "FAKENPU_IOCTL_BO_CREATE": hex(fakedev.IoctlNPUBOCreate),
		"FAKENPU_IOCTL_BO_INFO": hex(fakedev.IoctlNPUBOInfo), "FAKENPU_IOCTL_BO_CLOSE": hex(fakedev.IoctlNPUBOClose),
		"FAKENPU_IOCTL_INFER": hex(fakedev.IoctlNPUInfer), "FAKENPU_IOCTL_WAIT": hex(fakedev.IoctlNPUWait),
		"FAKENPU_PARAM_TILES": strconv.Itoa(fakedev.NPUParamTiles), "FAKENPU_PARAM_MACS_PER_SEC": strconv.Itoa(fakedev.NPUParamMACsPerSecond),
		"FAKENPU_PARAM_MAX_DIM": strconv.Itoa(fakedev.NPUParamMaxDim), "FAKENPU_MAX_DIM": strconv.Itoa(fakedev.NPUMaxDim),
		"bo_create.size": "0", "bo_create.flags": "8", "bo_create.handle": "12",
		"bo_info.handle": "0", "bo_info.mmap_offset": "8", "bo_info.size": "16",
		"infer.input": "0", "infer.weights": "4", "infer.output": "8", "infer.flags": "12", "infer.rows": "16", "infer.cols": "20", "infer.seq": "24",
		"ACCEL_MAP_BASE": strconv.Itoa(accel.MapBase),
	} {
		if got[key] != want {
			t.Errorf("C headers: %s = %q, pkg/fakedev says %q", key, got[key], want)
		}
	}
}
