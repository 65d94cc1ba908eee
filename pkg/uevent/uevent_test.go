package uevent

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func msg(fields ...string) []byte { return []byte(strings.Join(fields, "\x00") + "\x00") }

func TestParse(t *testing.T) {
	ev, err := Parse(msg("add@/devices/pci0000:00/0000:00:0b.0/accel/accel0",
		"ACTION=add", "DEVPATH=/devices/pci0000:00/0000:00:0b.0/accel/accel0", "SUBSYSTEM=accel",
		"MAJOR=261", "MINOR=0", "DEVNAME=accel/accel0", "SEQNUM=4711"))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Action != "add" || ev.Subsystem != "accel" || ev.DevName != "accel/accel0" || ev.Seq != 4711 || ev.Name() != "accel0" || ev.Env["MINOR"] != "0" {
		t.Fatalf("parsed %+v", ev)
	}
	// A change without a node, with a value holding '=' (drm's WEDGED list).
	ev, err = Parse(msg("change@/devices/pci0000:00/0000:01:00.0", "ACTION=change",
		"DEVPATH=/devices/pci0000:00/0000:01:00.0", "SUBSYSTEM=pci", "WEDGED=rebind,bus-reset", "X=a=b"))
	if err != nil || ev.DevName != "" || ev.Env["X"] != "a=b" || ev.Seq != 0 || ev.Name() != "0000:01:00.0" {
		t.Fatalf("parsed %+v, %v", ev, err)
	}
	for name, m := range map[string][]byte{
		"empty":           nil,
		"no at":           msg("add", "ACTION=add", "DEVPATH=/x"),
		"no devpath":      msg("add@", "ACTION=add", "DEVPATH="),
		"no action":       msg("@/x", "ACTION=", "DEVPATH=/x"),
		"action mismatch": msg("add@/x", "ACTION=remove", "DEVPATH=/x"),
		"path mismatch":   msg("add@/x", "ACTION=add", "DEVPATH=/y"),
		"missing keys":    msg("add@/x"),
		"relative path":   msg("add@x", "ACTION=add", "DEVPATH=x"),
		"not key=value":   msg("add@/x", "ACTION=add", "DEVPATH=/x", "junk"),
		"empty key":       msg("add@/x", "ACTION=add", "DEVPATH=/x", "=v"),
		"bad seqnum":      msg("add@/x", "ACTION=add", "DEVPATH=/x", "SEQNUM=-1"),
		"libudev header":  append([]byte("libudev\x00\xfe\xed\xca\xfe"), msg("ACTION=add")...),
		"too long":        msg("add@/x", "ACTION=add", "DEVPATH=/x", "K="+strings.Repeat("v", maxMessage)),
	} {
		if ev, err := Parse(m); err == nil {
			t.Errorf("%s: parsed as %+v", name, ev)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(msg("add@/devices/a/accel/accel0", "ACTION=add", "DEVPATH=/devices/a/accel/accel0", "SUBSYSTEM=accel", "SEQNUM=1"))
	f.Add(msg("change@/x", "ACTION=change", "DEVPATH=/x", "K=v=w"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := Parse(b)
		if err != nil {
			return
		}
		if ev.Action == "" || !strings.HasPrefix(ev.DevPath, "/") || ev.Env["ACTION"] != ev.Action || ev.Env["DEVPATH"] != ev.DevPath {
			t.Fatalf("accepted inconsistent %+v", ev)
		}
		if !strings.HasPrefix(string(b), ev.Action+"@"+ev.DevPath) {
			t.Fatalf("header of %q is not %s@%s", b, ev.Action, ev.DevPath)
		}
	})
}

// inPrivateNetns runs f on an OS thread in a new network namespace; the
// thread is never returned to Go's pool (it exits with the goroutine), and
// sockets made there stay in that namespace wherever they are used.
func inPrivateNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a private network namespace needs root")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		f()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Skip(err)
	}
}

// sender is a netlink socket in the uevent family that multicasts to the
// kernel's group, as only a process with CAP_NET_ADMIN may.
// It is made on the namespace's thread, so it reports errors instead of
// failing the test there (t.Fatal must run on the test's goroutine).
func sender(t *testing.T) (send func(m []byte), err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("sender socket: %w", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sender bind: %w", err)
	}
	return func(m []byte) {
		t.Helper()
		if err := unix.Sendto(fd, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: kernelGroup}); err != nil {
			t.Fatalf("send uevent: %v", err)
		}
	}, nil
}

// privateConn is a listener and a sender in a new network namespace (nil
// when the test was skipped or failed); the listener is closed at the
// test's end.
func privateConn(t *testing.T) (c *Conn, send func([]byte)) {
	t.Helper()
	var err error
	inPrivateNetns(t, func() {
		if c, err = Dial(); err != nil {
			return
		}
		send, err = sender(t)
	})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	if err != nil {
		t.Fatal(err)
	}
	return c, send
}

// readEvent reads with a deadline: Close unblocks Read.
func readEvent(t *testing.T, c *Conn) (Event, error) {
	t.Helper()
	timer := time.AfterFunc(10*time.Second, func() { c.Close() })
	defer timer.Stop()
	return c.Read()
}

// TestInjectedEvents sends uevents to a listener through the kernel's
// netlink multicast, in a private network namespace (so that nothing else
// on the machine sees them, and no other sender's reach this test's
// accept filter): they arrive whole, in order, malformed ones as errors
// that do not stop the stream.
func TestInjectedEvents(t *testing.T) {
	c, send := privateConn(t)
	if c == nil {
		return
	}
	// User-space senders: in this namespace, only this test's.
	c.accept = func(from *unix.SockaddrNetlink) bool { return from.Pid != 0 }
	send(msg("add@/devices/p/accel/accel3", "ACTION=add", "DEVPATH=/devices/p/accel/accel3", "SUBSYSTEM=accel", "DEVNAME=accel/accel3", "SEQNUM=1"))
	send([]byte("garbage"))
	send(msg("remove@/devices/p/accel/accel3", "ACTION=remove", "DEVPATH=/devices/p/accel/accel3", "SUBSYSTEM=accel", "SEQNUM=2"))
	ev, err := readEvent(t, c)
	if err != nil || ev.Action != "add" || ev.Name() != "accel3" || ev.Seq != 1 {
		t.Fatalf("first: %+v, %v", ev, err)
	}
	if _, err := readEvent(t, c); err == nil || errors.Is(err, os.ErrClosed) {
		t.Fatalf("garbage: want a parse error, got %v", err)
	}
	ev, err = readEvent(t, c)
	if err != nil || ev.Action != "remove" || ev.Seq != 2 {
		t.Fatalf("third: %+v, %v", ev, err)
	}
}

// TestKernelEventsOnly shows that a forged uevent (sent from user space,
// as any CAP_NET_ADMIN process in the namespace could) is dropped by
// default while the kernel's own get through: the kernel event here is a
// synthetic "change" of /dev/full's device, which the kernel broadcasts to
// every network namespace, the private one included.
func TestKernelEventsOnly(t *testing.T) {
	const uevent = "/sys/devices/virtual/mem/full/uevent"
	c, send := privateConn(t)
	if c == nil {
		return
	}
	send(msg("remove@/devices/virtual/mem/full", "ACTION=remove", "DEVPATH=/devices/virtual/mem/full", "SUBSYSTEM=mem"))
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	u := fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:16])
	if err := os.WriteFile(uevent, []byte("change "+u+" ACCELTEST=1"), 0); err != nil {
		t.Skipf("cannot trigger a kernel uevent: %v", err)
	}
	for {
		ev, err := readEvent(t, c)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Action == "remove" {
			t.Fatalf("a forged uevent passed: %+v", ev)
		}
		if ev.Env["SYNTH_UUID"] != u {
			continue // another kernel event on this machine
		}
		if ev.Action != "change" || ev.DevPath != "/devices/virtual/mem/full" || ev.Subsystem != "mem" || ev.Env["SYNTH_ARG_ACCELTEST"] != "1" {
			t.Fatalf("kernel event %+v", ev)
		}
		return
	}
}
