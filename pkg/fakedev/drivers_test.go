package fakedev

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

func ioctl(t *testing.T, f *accel.File, cmd uint32, in []byte) []byte {
	t.Helper()
	out := make([]byte, accel.IoctlSize(cmd))
	if err := f.Ioctl(cmd, in, out); err != nil {
		t.Fatalf("ioctl %#x: %v", cmd, err)
	}
	return out
}

func writeWords(t *testing.T, f *accel.File, off uint64, words []uint32) {
	t.Helper()
	b := make([]byte, 4*len(words))
	for i, w := range words {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	if err := f.WriteMapped(b, off); err != nil {
		t.Fatal(err)
	}
}

// Both drivers register on one core: indices, names and serials are the
// core's, in the order the devices were added, and each device reports
// its own driver and model.
func TestMixedDriversOnOneCore(t *testing.T) {
	s, reg := newSim(t, 0, Config{})
	if _, err := s.AddDriver(DriverName, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddDriver(NPUDriverName, 2); err != nil {
		t.Fatal(err)
	}
	_, err := s.AddDriver("nosuch", 1)
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("unknown driver: %v, want EINVAL", err)
	}
	var got []string
	serials := map[string]bool{}
	for _, d := range reg.Devices() {
		got = append(got, d.Name()+"="+d.Identity().Driver+"/"+d.Identity().Model)
		serials[d.Identity().Serial] = true
	}
	want := []string{"ac0=fakedev/Simulated Accel SA-1", "ac1=fakedev/Simulated Accel SA-1", "ac2=fakenpu/Simulated NPU SN-1", "ac3=fakenpu/Simulated NPU SN-1"}
	if !slices.Equal(got, want) || len(serials) != 4 {
		t.Fatalf("devices %v (%d serials), want %v with 4 distinct serials", got, len(serials), want)
	}
	// fakedev keeps the serials it had alone; another driver's device in
	// the same slot of a simulator with the same seed is another device.
	for slot, d := range reg.Devices() {
		if id := d.Identity(); id.Serial != DriverSerial("accel-sim", id.Driver, slot) {
			t.Errorf("%s: serial %s, want DriverSerial(seed, %s, %d)", d.Name(), id.Serial, id.Driver, slot)
		}
	}
	if DriverSerial("s", DriverName, 0) != Serial("s", 0) || DriverSerial("s", NPUDriverName, 0) == Serial("s", 0) {
		t.Errorf("serials: fakedev must keep Serial's, fakenpu must differ from it in the same slot")
	}
	if out, err := s.Control(t.Context(), "add 1 fakenpu"); err != nil || out != "added ac4" || reg.Devices()[4].Identity().Driver != NPUDriverName {
		t.Fatalf("control add 1 fakenpu: %q %v", out, err)
	}
}

// A driver's commands reach only its own devices: every command of the
// other driver is ENOTTY.
func TestOtherDriversCommandsAreENOTTY(t *testing.T) {
	s, _ := newSim(t, 0, Config{})
	gen, _ := s.AddDriver(DriverName, 1)
	npu, _ := s.AddDriver(NPUDriverName, 1)
	fakedevCmds := []uint32{IoctlMemAlloc, IoctlMemFree, IoctlMemMap, IoctlJobSubmit, IoctlJobWait}
	npuCmds := []uint32{IoctlNPUGetParam, IoctlNPUBOCreate, IoctlNPUBOInfo, IoctlNPUBOClose, IoctlNPUInfer, IoctlNPUWait}
	for _, tc := range []struct {
		dev  *accel.Device
		cmds []uint32
	}{{gen[0], npuCmds}, {npu[0], fakedevCmds}} {
		f := openCompute(t, tc.dev)
		for _, cmd := range tc.cmds {
			err := f.Ioctl(cmd, make([]byte, accel.IoctlSize(cmd)), make([]byte, accel.IoctlSize(cmd)))
			if !errors.Is(err, syscall.ENOTTY) {
				t.Errorf("%s (%s): command %#x of the other driver: %v, want ENOTTY", tc.dev.Name(), tc.dev.Identity().Driver, cmd, err)
			}
		}
	}
}

// fakedev's jobs: add two vectors into a third, checksum one; the wait
// reports the result, and bad arguments are refused.
func TestFakedevJobs(t *testing.T) {
	_, reg := newSim(t, 1, Config{Throughput: 1 << 20}) // 1 MiB/s: 12 KiB take about 12 ms
	f := openCompute(t, reg.Devices()[0])
	var h [3]uint64
	var off [3]uint64
	for i := range h {
		h[i] = DecodeMemAlloc(ioctl(t, f, IoctlMemAlloc, EncodeMemAlloc(4096)))
		off[i], _ = DecodeMemMap(ioctl(t, f, IoctlMemMap, EncodeMemMap(h[i])))
	}
	a, b := make([]uint32, 1024), make([]uint32, 1024)
	for i := range a {
		a[i], b[i] = uint32(i), 0xffffffff-uint32(i)+2 // a+b = 1 (mod 2^32)
	}
	writeWords(t, f, off[0], a)
	writeWords(t, f, off[1], b)
	job := DecodeJobArgs(ioctl(t, f, IoctlJobSubmit, JobArgs{Op: OpAddU32, Src0: h[0], Src1: h[1], Dst: h[2], Count: 1024}.Encode()))
	w := DecodeWaitArgs(ioctl(t, f, IoctlJobWait, WaitArgs{Seq: job.Seq, TimeoutNS: int64(5 * time.Second)}.Encode()))
	if w.Status != 0 || time.Duration(w.RunNS) < 11*time.Millisecond {
		t.Fatalf("add job: status %d, ran %s; want 0 and about 12 ms at 1 MiB/s", w.Status, time.Duration(w.RunNS))
	}
	got := make([]byte, 4096)
	if err := f.ReadMapped(got, off[2]); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4096; i += 4 {
		if v := binary.LittleEndian.Uint32(got[i:]); v != 1 {
			t.Fatalf("dst[%d] = %d, want 1", i/4, v)
		}
	}
	sum := DecodeJobArgs(ioctl(t, f, IoctlJobSubmit, JobArgs{Op: OpChecksum, Src0: h[0], Count: 1024}.Encode()))
	w = DecodeWaitArgs(ioctl(t, f, IoctlJobWait, WaitArgs{Seq: sum.Seq, TimeoutNS: int64(5 * time.Second)}.Encode()))
	if w.Status != 0 || w.Result != 1023*1024/2 {
		t.Fatalf("checksum: status %d result %d, want %d", w.Status, w.Result, 1023*1024/2)
	}
	if info := reg.Devices()[0].Info(); info.JobsCompleted != 2 || info.BusyTime < 11*time.Millisecond {
		t.Fatalf("info after two jobs: %d jobs, busy %s", info.JobsCompleted, info.BusyTime)
	}
	for _, tc := range []struct {
		name string
		job  JobArgs
		want syscall.Errno
	}{
		{"unknown op", JobArgs{Op: 9, Src0: h[0], Src1: h[1], Dst: h[2], Count: 1}, syscall.EINVAL},
		{"flags", JobArgs{Op: OpAddU32, Flags: 1, Src0: h[0], Src1: h[1], Dst: h[2], Count: 1}, syscall.EINVAL},
		{"count 0", JobArgs{Op: OpAddU32, Src0: h[0], Src1: h[1], Dst: h[2]}, syscall.EINVAL},
		{"count past the buffers", JobArgs{Op: OpAddU32, Src0: h[0], Src1: h[1], Dst: h[2], Count: 1025}, syscall.EINVAL},
		{"count that overflows bytes", JobArgs{Op: OpAddU32, Src0: h[0], Src1: h[1], Dst: h[2], Count: 1 << 62}, syscall.EINVAL},
		{"handle not held", JobArgs{Op: OpAddU32, Src0: h[0], Src1: 77, Dst: h[2], Count: 1}, syscall.ENOENT},
		{"checksum with a dst", JobArgs{Op: OpChecksum, Src0: h[0], Dst: h[2], Count: 1}, syscall.EINVAL},
	} {
		if err := f.Ioctl(IoctlJobSubmit, tc.job.Encode(), make([]byte, 48)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		wait WaitArgs
		want syscall.Errno
	}{
		{"job already waited for", WaitArgs{Seq: job.Seq}, syscall.EINVAL},
		{"negative timeout", WaitArgs{Seq: job.Seq, TimeoutNS: -1}, syscall.EINVAL},
		{"timeout past the maximum", WaitArgs{Seq: job.Seq, TimeoutNS: int64(MaxWaitTimeout) + 1}, syscall.EINVAL},
	} {
		if err := f.Ioctl(IoctlJobWait, tc.wait.Encode(), make([]byte, 40)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := f.Ioctl(IoctlMemMap, EncodeMemMap(99), make([]byte, 24)); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("map of a handle not held: %v, want ENOENT", err)
	}
}

// fakenpu: its own facts, buffer objects and an inference whose answer is
// the fully connected layer with ReLU.
func TestNPUInference(t *testing.T) {
	s, reg := newSim(t, 0, Config{})
	if _, err := s.AddDriver(NPUDriverName, 1); err != nil {
		t.Fatal(err)
	}
	d := reg.Devices()[0]
	f := openCompute(t, d)
	param := func(p uint32) uint64 {
		in := make([]byte, 16)
		binary.LittleEndian.PutUint32(in, p)
		return binary.LittleEndian.Uint64(ioctl(t, f, IoctlNPUGetParam, in)[8:])
	}
	if param(NPUParamTiles) != NPUTiles || param(NPUParamMaxDim) != NPUMaxDim || param(NPUParamMACsPerSecond) != DefaultThroughput {
		t.Fatalf("params: tiles %d, max dim %d, MAC/s %d", param(NPUParamTiles), param(NPUParamMaxDim), param(NPUParamMACsPerSecond))
	}
	const rows, cols = 3, 4
	x := []int8{1, -2, 3, -4}
	w := []int8{1, 1, 1, 1, -1, -1, -1, -1, 127, -128, 2, 0}
	want := []int32{0, 2, 127 + 256 + 6} // relu(-2), relu(2), 389
	create := func(size uint64) (uint32, uint64) {
		h := DecodeBOCreate(ioctl(t, f, IoctlNPUBOCreate, EncodeBOCreate(size)))
		in := make([]byte, 24)
		binary.LittleEndian.PutUint32(in, h)
		out := ioctl(t, f, IoctlNPUBOInfo, in)
		return h, binary.LittleEndian.Uint64(out[8:])
	}
	hx, ox := create(cols)
	hw, ow := create(rows * cols)
	hy, oy := create(rows * 4)
	toBytes := func(v []int8) []byte {
		b := make([]byte, len(v))
		for i := range v {
			b[i] = byte(v[i])
		}
		return b
	}
	if err := f.WriteMapped(toBytes(x), ox); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteMapped(toBytes(w), ow); err != nil {
		t.Fatal(err)
	}
	job := DecodeInferArgs(ioctl(t, f, IoctlNPUInfer, InferArgs{Input: hx, Weights: hw, Output: hy, Rows: rows, Cols: cols}.Encode()))
	res := DecodeWaitArgs(ioctl(t, f, IoctlNPUWait, WaitArgs{Seq: job.Seq, TimeoutNS: int64(5 * time.Second)}.Encode()))
	if res.Status != 0 {
		t.Fatalf("inference status %d", res.Status)
	}
	y := make([]byte, rows*4)
	if err := f.ReadMapped(y, oy); err != nil {
		t.Fatal(err)
	}
	for r := range rows {
		if got := int32(binary.LittleEndian.Uint32(y[4*r:])); got != want[r] {
			t.Errorf("output[%d] = %d, want %d", r, got, want[r])
		}
	}
	for _, tc := range []struct {
		name string
		args InferArgs
		want syscall.Errno
	}{
		{"rows 0", InferArgs{Input: hx, Weights: hw, Output: hy, Cols: cols}, syscall.EINVAL},
		{"cols past the maximum", InferArgs{Input: hx, Weights: hw, Output: hy, Rows: 1, Cols: NPUMaxDim + 1}, syscall.EINVAL},
		{"weights too small", InferArgs{Input: hx, Weights: hw, Output: hy, Rows: rows + 1, Cols: cols}, syscall.EINVAL},
		{"flags", InferArgs{Input: hx, Weights: hw, Output: hy, Rows: rows, Cols: cols, Flags: 2}, syscall.EINVAL},
		{"output not held", InferArgs{Input: hx, Weights: hw, Output: 999, Rows: rows, Cols: cols}, syscall.ENOENT},
	} {
		if err := f.Ioctl(IoctlNPUInfer, tc.args.Encode(), make([]byte, 32)); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	closeArg := make([]byte, 8)
	binary.LittleEndian.PutUint32(closeArg, hy)
	if err := f.Ioctl(IoctlNPUBOClose, closeArg, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Ioctl(IoctlNPUBOClose, closeArg, nil); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("double close: %v, want EINVAL", err)
	}
	if err := f.Ioctl(IoctlNPUBOCreate, EncodeBOCreate(0), make([]byte, 16)); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("create of 0 bytes: %v, want EINVAL", err)
	}
}

// A corrupt fault is silent: the device stays operational and keeps
// running jobs, but every answer has one bit flipped (the first word
// written, or the result word), until recover or reset clears it.
func TestCorruptFault(t *testing.T) {
	s, reg := newSim(t, 1, Config{ResetDuration: time.Millisecond})
	d := reg.Devices()[0]
	f := openCompute(t, d)
	var h, off [3]uint64
	for i := range h {
		h[i] = DecodeMemAlloc(ioctl(t, f, IoctlMemAlloc, EncodeMemAlloc(4096)))
		off[i], _ = DecodeMemMap(ioctl(t, f, IoctlMemMap, EncodeMemMap(h[i])))
	}
	writeWords(t, f, off[0], []uint32{1, 2, 3, 4})
	writeWords(t, f, off[1], []uint32{10, 20, 30, 40})
	run := func() (dst []uint32, sum uint64) {
		t.Helper()
		for _, a := range []JobArgs{
			{Op: OpAddU32, Src0: h[0], Src1: h[1], Dst: h[2], Count: 4},
			{Op: OpChecksum, Src0: h[0], Count: 4},
		} {
			job := DecodeJobArgs(ioctl(t, f, IoctlJobSubmit, a.Encode()))
			w := DecodeWaitArgs(ioctl(t, f, IoctlJobWait, WaitArgs{Seq: job.Seq, TimeoutNS: int64(5 * time.Second)}.Encode()))
			if w.Status != 0 {
				t.Fatalf("job %d: status %d; a corrupt device still completes its jobs", a.Op, w.Status)
			}
			sum = w.Result
		}
		b := make([]byte, 16)
		if err := f.ReadMapped(b, off[2]); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 16; i += 4 {
			dst = append(dst, binary.LittleEndian.Uint32(b[i:]))
		}
		return dst, sum
	}
	right, wrong := []uint32{11, 22, 33, 44}, []uint32{10, 22, 33, 44}
	for _, step := range []struct {
		cmd, says string
		dst       []uint32
		sum       uint64
	}{
		{"", "", right, 10},
		{"fault ac0 corrupt", "ac0: corrupt (every job's answer has a bit flipped; status stays operational)", wrong, 11},
		{"recover ac0", "ac0: operational", right, 10},
		{"fault ac0 corrupt", "", wrong, 11},
		{"reset ac0", "ac0: operational after reset (reset_count 1)", right, 10},
	} {
		if step.cmd != "" {
			got, err := s.Control(t.Context(), step.cmd)
			if err != nil || (step.says != "" && got != step.says) {
				t.Fatalf("%q: %q, %v; want %q", step.cmd, got, err, step.says)
			}
		}
		if st := d.Status(); st != accel.StatusOperational {
			t.Fatalf("after %q: status %s, want operational (corruption is silent)", step.cmd, st)
		}
		if dst, sum := run(); !slices.Equal(dst, step.dst) || sum != step.sum {
			t.Fatalf("after %q: add gave %v, checksum %d; want %v and %d", step.cmd, dst, sum, step.dst, step.sum)
		}
	}
}

// A job's duration follows the throughput and saturates instead of
// wrapping when it is beyond what a time.Duration holds.
func TestJobDuration(t *testing.T) {
	if got := (&Device{throughput: 1 << 20}).jobDuration(1 << 20); got != time.Second {
		t.Errorf("1 MiB at 1 MiB/s: %s, want 1s", got)
	}
	if got := (&Device{throughput: 1}).jobDuration(3 << 34); got != math.MaxInt64 {
		t.Errorf("48 GiB at 1 byte/s: %d ns, want the maximum %d", int64(got), int64(math.MaxInt64))
	}
}
