package devfs

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Regression (review of issue 10): a monitor node reads like a regular
// file of MonitorReadSize bytes whatever the reader's buffer size: a read
// with a buffer smaller than the summary returns the first bytes, the
// following reads (at the descriptor's offset) the rest, and pread reads
// any range. Before the fix every read with a buffer under the remaining
// text failed with EIO (`dd if=DIR/ac0_monitor bs=80 count=1` among them),
// because the reply was longer than the request.
func TestMonitorShortReads(t *testing.T) {
	m := mountSim(t, 1)
	path := m.path("ac0_monitor")
	whole, err := os.ReadFile(path)
	if err != nil || len(whole) != MonitorReadSize {
		t.Fatalf("read of the whole node: %d bytes, %v; want %d", len(whole), err, MonitorReadSize)
	}

	for _, size := range []int{1, 80, 511} {
		// The summary counts open monitor files, and FUSE releases a
		// closed one after close() returns: wait for the last reader's
		// release, so this reader's text is the one read above.
		waitMonitorClients(t, m, 0)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, size)
		reads := 0
		for {
			n, err := f.Read(buf)
			if n > size {
				t.Fatalf("buffer of %d: a read returned %d bytes", size, n)
			}
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Close()
				t.Fatalf("buffer of %d: read %d at offset %d: %v", size, reads+1, len(got), err)
			}
			reads++
		}
		f.Close()
		if want := (MonitorReadSize + size - 1) / size; reads != want {
			t.Errorf("buffer of %d: %d reads with data, want %d", size, reads, want)
		}
		if !bytes.Equal(got, whole) {
			t.Errorf("buffer of %d: pieces joined give %q, want %q", size, got, whole)
		}
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	piece := make([]byte, 50)
	if n, err := f.ReadAt(piece, 100); err != nil || n != 50 || !bytes.Equal(piece, whole[100:150]) {
		t.Errorf("pread of 50 bytes at 100: %d, %v, %q; want %q", n, err, piece[:n], whole[100:150])
	}
	if n, err := f.ReadAt(piece, MonitorReadSize-10); err != io.EOF || n != 10 || !bytes.Equal(piece[:n], whole[MonitorReadSize-10:]) {
		t.Errorf("pread across the end: %d, %v; want the last 10 bytes and EOF", n, err)
	}

	if _, err := exec.LookPath("dd"); err == nil {
		out, err := exec.Command("dd", "if="+path, "bs=80", "count=1", "status=none").Output()
		if err != nil || !bytes.Equal(out, whole[:80]) {
			t.Errorf("dd bs=80 count=1: %q, %v; want the first 80 bytes %q", out, err, whole[:80])
		}
	}
	if !strings.HasPrefix(string(whole), "ac0 operational:") {
		t.Errorf("summary %q", whole)
	}
}

// waitMonitorClients waits, up to a deadline, until device 0 has n open
// monitor files.
func waitMonitorClients(t *testing.T, m *testMount, n uint32) {
	t.Helper()
	d := m.reg.Devices()[0]
	deadline := time.Now().Add(5 * time.Second)
	for d.Info().MonitorClients != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d monitor clients after 5s, want %d", d.Name(), d.Info().MonitorClients, n)
		}
		runtime.Gosched()
	}
}
