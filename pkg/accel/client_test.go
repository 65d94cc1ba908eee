package accel

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"unsafe"

	"golang.org/x/sys/unix"
)

func TestInfoPathNeverComputeNode(t *testing.T) {
	for in, want := range map[string]string{
		"/run/accel/dev/ac0":         "/run/accel/dev/ac0_monitor",
		"/run/accel/dev/ac17":        "/run/accel/dev/ac17_monitor",
		"ac3":                        "ac3_monitor",
		"/dev/accel/ac2_monitor":     "/dev/accel/ac2_monitor",
		"/dev/accel/accel0":          "/dev/accel/accel0",
		"/run/accel/dev/ac01":        "/run/accel/dev/ac01",
		"/run/accel/dev/sys/control": "/run/accel/dev/sys/control",
	} {
		if got := InfoPath(in); got != want {
			t.Errorf("InfoPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// openWatch reports every open(2) of the files in dir, through inotify.
type openWatch struct{ fd int }

func watchOpens(t *testing.T, dir string) *openWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_OPEN); err != nil {
		t.Fatal(err)
	}
	return &openWatch{fd: fd}
}

// opened returns the names opened since the last call.
func (w *openWatch) opened(t *testing.T) []string {
	t.Helper()
	var names []string
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			names = append(names, strings.TrimRight(string(name), "\x00"))
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// Regression (issue 10, item 3): with the monitor node gone, ReadInfo
// fell back to opening the compute node. It must fail, name the missing
// monitor node, wrap os.ErrNotExist, and leave the compute node unopened.
func TestReadInfoWithoutMonitorNeverOpensCompute(t *testing.T) {
	dir := t.TempDir()
	compute := filepath.Join(dir, "ac3")
	if err := os.WriteFile(compute, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "mine")
	if err := os.Symlink("ac3", link); err != nil {
		t.Fatal(err)
	}
	w := watchOpens(t, dir)
	for _, path := range []string{compute, link} {
		_, err := ReadInfo(path)
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), filepath.Join(dir, "ac3_monitor")) {
			t.Errorf("ReadInfo(%s) without a monitor node: %v; want an error naming ac3_monitor that wraps os.ErrNotExist", path, err)
		}
	}
	if got := w.opened(t); len(got) > 0 {
		t.Fatalf("ReadInfo opened %v; a compute node must never be opened to read its info", got)
	}

	// With a monitor node present, only the monitor node is opened (it is a
	// plain file here, so the ioctl itself fails with ENOTTY).
	if err := os.WriteFile(filepath.Join(dir, "ac3_monitor"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadInfo(compute); !errors.Is(err, syscall.ENOTTY) {
		t.Fatalf("ReadInfo through a monitor that is a plain file: %v, want ENOTTY", err)
	}
	if got := w.opened(t); len(got) != 1 || got[0] != "ac3_monitor" {
		t.Fatalf("ReadInfo opened %v, want only ac3_monitor", got)
	}
}
