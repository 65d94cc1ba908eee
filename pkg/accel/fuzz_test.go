package accel

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"unicode/utf8"
)

// FuzzInfoUnmarshal: decoding any bytes never panics, refuses what it does
// not understand, and whatever it accepts re-encodes to bytes that decode
// to the same Info.
func FuzzInfoUnmarshal(f *testing.F) {
	good, _ := (&Info{Name: "ac0", Serial: "SN", Driver: "fakedev", Model: "M", HolderPID: 7, ComputeInUse: true, NUMANode: -1}).MarshalBinary()
	f.Add(good)
	f.Add(good[:8])
	f.Add([]byte{})
	long, _ := (&Info{Name: strings.Repeat("é", 40), Serial: strings.Repeat("🚀", 30), Status: StatusRemoved}).MarshalBinary()
	f.Add(long)
	bigger := append(append([]byte(nil), good...), make([]byte, 64)...)
	bigger[0], bigger[1] = 0x40, 0x01 // size 320
	f.Add(bigger)
	f.Fuzz(func(t *testing.T, b []byte) {
		var info Info
		if err := info.UnmarshalBinary(b); err != nil {
			if info != (Info{}) {
				t.Fatalf("refused input changed the Info: %+v", info)
			}
			return
		}
		if info.Status > StatusRemoved {
			t.Fatalf("accepted unknown status %d", info.Status)
		}
		re, err := info.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var again Info
		if err := again.UnmarshalBinary(re); err != nil {
			t.Fatalf("re-encoded info refused: %v", err)
		}
		if again != info {
			t.Fatalf("round trip changed the info:\n got %+v\nwant %+v", again, info)
		}
	})
}

// FuzzInfoRoundTrip: every valid Info (known status, strings without NUL)
// survives encoding, with each string cut to its field at a rune
// boundary: valid UTF-8 stays valid, and a string that fits comes back
// whole.
func FuzzInfoRoundTrip(f *testing.F) {
	f.Add("ac0", "fakedev", "Simulated Accel SA-1", "SN-0001", uint32(0), uint32(0), int32(0), true, uint64(1<<34), int32(-1))
	f.Add(strings.Repeat("é", 20), "d", strings.Repeat("€", 30), strings.Repeat("🚀", 20), uint32(255), uint32(4), int32(1<<30), false, uint64(0), int32(3))
	f.Fuzz(func(t *testing.T, name, driver, model, serial string, index, status uint32, pid int32, inUse bool, mem uint64, numa int32) {
		if status > uint32(StatusRemoved) {
			status %= uint32(StatusRemoved) + 1
		}
		strip := func(s string) string { return strings.ReplaceAll(s, "\x00", "") }
		in := Info{Name: strip(name), Driver: strip(driver), Model: strip(model), Serial: strip(serial), Index: index,
			Status: Status(status), HolderPID: pid, ComputeInUse: inUse, MemoryTotal: mem, NUMANode: numa}
		b, _ := in.MarshalBinary()
		var out Info
		if err := out.UnmarshalBinary(b); err != nil {
			t.Fatalf("valid info refused: %v (%+v)", err, in)
		}
		for _, f := range []struct {
			what    string
			in, out string
			size    int
		}{{"name", in.Name, out.Name, infoNameLen}, {"driver", in.Driver, out.Driver, infoDriverLen},
			{"model", in.Model, out.Model, infoModelLen}, {"serial", in.Serial, out.Serial, infoSerialLen}} {
			switch {
			case !strings.HasPrefix(f.in, f.out) || len(f.out) >= f.size:
				t.Fatalf("%s %q decoded as %q", f.what, f.in, f.out)
			case len(f.in) < f.size && f.out != f.in:
				t.Fatalf("%s %q fits its field but decoded as %q", f.what, f.in, f.out)
			case utf8.ValidString(f.in) && !utf8.ValidString(f.out):
				t.Fatalf("%s %q cut inside a rune: %q", f.what, f.in, f.out)
			case utf8.ValidString(f.in) && len(f.out) < f.size-utf8.UTFMax && f.out != f.in:
				t.Fatalf("%s %q cut too short: %q", f.what, f.in, f.out)
			}
		}
		out.Name, out.Driver, out.Model, out.Serial = in.Name, in.Driver, in.Model, in.Serial
		if out != in {
			t.Fatalf("numbers changed:\n got %+v\nwant %+v", out, in)
		}
	})
}

// fuzzDriver answers driver command DriverCommandBase when its argument
// sizes match the command, like a real driver would.
type fuzzDriver struct{ stubDriver }

func (d *fuzzDriver) Command(f *File, cmd uint32, in, out []byte) error {
	if IoctlNR(cmd) != DriverCommandBase {
		return syscall.ENOTTY
	}
	if int(IoctlSize(cmd)) != len(out) {
		return syscall.EINVAL
	}
	copy(out, in)
	return nil
}

// FuzzIoctl: any command number with any argument sizes, on either node of
// a device in any status, never panics and fails only with an errno the
// uAPI documents.
func FuzzIoctl(f *testing.F) {
	f.Add(IoctlInfo, uint16(0), uint16(InfoSize), false, uint8(0))
	f.Add(IoctlInfo, uint16(0), uint16(InfoSize), true, uint8(4))
	f.Add(IOWR(DriverCommandBase, 16), uint16(16), uint16(16), false, uint8(0))
	f.Add(IOWR(DriverCommandBase, 16), uint16(16), uint16(16), true, uint8(1))
	f.Add(IOWR(DriverCommandBase, 16), uint16(3), uint16(0), false, uint8(2))
	f.Add(IOC(2, 'T', 1, 8), uint16(8), uint16(8), false, uint8(0))
	f.Add(uint32(0xffffffff), uint16(65535), uint16(65535), false, uint8(3))
	documented := []syscall.Errno{syscall.EBUSY, syscall.EAGAIN, syscall.EPERM, syscall.ENODEV, syscall.ENOTTY, syscall.EINVAL}
	f.Fuzz(func(t *testing.T, cmd uint32, inLen, outLen uint16, monitor bool, status uint8) {
		r := NewRegistry(Options{})
		defer r.Close()
		d, err := r.Register(&fuzzDriver{stubDriver{serial: "F"}})
		if err != nil {
			t.Fatal(err)
		}
		kind := NodeCompute
		if monitor {
			kind = NodeMonitor
		}
		file, err := d.Open(context.Background(), kind, 1)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Release()
		switch s := Status(status % 5); s {
		case StatusRemoved:
			_ = r.Unregister(d)
		default:
			_ = d.SetStatus(s)
		}
		in, out := make([]byte, inLen), make([]byte, outLen)
		err = file.Ioctl(cmd, in, out)
		if err == nil {
			if cmd == IoctlInfo {
				var info Info
				if uerr := info.UnmarshalBinary(out); uerr != nil {
					t.Fatalf("info ioctl wrote an undecodable struct: %v", uerr)
				}
			}
			return
		}
		var errno syscall.Errno
		if !errors.As(err, &errno) {
			t.Fatalf("ioctl %#x: error %v is not an errno", cmd, err)
		}
		for _, e := range documented {
			if errno == e {
				return
			}
		}
		t.Fatalf("ioctl %#x: undocumented errno %v", cmd, errno)
	})
}

// FuzzParseNodeName: every accepted name is the one canonical name of its
// index and kind (so no index has two names), and every index's names
// parse back to it.
func FuzzParseNodeName(f *testing.F) {
	for _, s := range []string{"ac0", "ac17", "ac3_monitor", "ac", "ac01", "ac-1", "ac1_monitorx", "sys", "ac9999999999999999999", "ac+1", "ac 1", "ac١"} {
		f.Add(s, uint32(0))
	}
	f.Add("", uint32(255))
	f.Fuzz(func(t *testing.T, name string, i uint32) {
		if index, kind, ok := ParseNodeName(name); ok {
			canonical := ComputeName(index)
			if kind == NodeMonitor {
				canonical = MonitorName(index)
			}
			if index < 0 || canonical != name {
				t.Fatalf("ParseNodeName(%q) = %d, %v: its canonical name is %q", name, index, kind, canonical)
			}
		}
		n := int(i % (1 << 31))
		for kind, s := range map[NodeKind]string{NodeCompute: ComputeName(n), NodeMonitor: MonitorName(n)} {
			if index, k, ok := ParseNodeName(s); !ok || index != n || k != kind {
				t.Fatalf("ParseNodeName(%q) = %d, %v, %v; want %d, %v", s, index, k, ok, n, kind)
			}
		}
	})
}
