package devfsclient

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The checks made before anything is sent; the round trips through a
// served tree are in package devfs's tests.
func TestControlRefusesBeforeSending(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ cmd, want string }{
		{"add\nremove 0", "a command is one line"},
		{"add\rremove 0", "a command is one line"},
		{strings.Repeat("x", MaxControlLine+1), "the limit is 4096 bytes"},
		{"add", "is `accel-plugin sim --dir " + dir + "` running?"},
	} {
		if _, err := Control(dir, c.cmd); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Control(%.20q) = %v, want an error naming %q", c.cmd, err, c.want)
		}
	}
}

func TestNodes(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"ac2", "ac0", "ac0_monitor", "ac10_monitor", "acx", "ac01", SysDir} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Nodes(dir)
	if err != nil || !slices.Equal(got, []int{0, 2, 10}) {
		t.Fatalf("Nodes = %v, %v; want [0 2 10]", got, err)
	}
	if _, err := Nodes(filepath.Join(dir, "missing")); err == nil {
		t.Error("Nodes of a missing directory: no error")
	}
}

func TestOpenEventsWithoutSimulator(t *testing.T) {
	dir := t.TempDir()
	_, err := OpenEvents(dir)
	if err == nil || !strings.Contains(err.Error(), "is `accel-plugin sim --dir "+dir+"` running?") {
		t.Fatalf("OpenEvents = %v, want a hint to start the simulator", err)
	}
}
