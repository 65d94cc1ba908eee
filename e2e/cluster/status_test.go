package cluster

import (
	"strconv"
	"strings"
	"testing"
)

// Leftovers names a running component (its command line names StateDir)
// and its PID file, and nothing once both are gone.
func TestLeftovers(t *testing.T) {
	p := standins(t, "standin", map[string]string{compEtcd: "sleep"})
	if left := p.Leftovers(); len(left) != 0 {
		t.Fatalf("before any start: %q", left)
	}
	k, err := p.start(compEtcd)
	if err != nil {
		t.Fatal(err)
	}
	defer p.kids.stopAll(0)
	waitCmdline(t, k.rec.PID)
	left := strings.Join(p.Leftovers(), "; ")
	if !strings.Contains(left, "PID files "+p.pidFile(compEtcd)) || !strings.Contains(left, "pid "+strconv.Itoa(k.rec.PID)+" (") {
		t.Errorf("with etcd running: %q, want its PID file and its process", left)
	}
	if err := p.stop(compEtcd, 0); err != nil {
		t.Fatal(err)
	}
	<-k.done
	if left := p.Leftovers(); len(left) != 0 {
		t.Errorf("after stop: %q", left)
	}
}
