package kind

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// inNetns runs f on a thread in a new network namespace (its own iptables
// tables), which the thread and the commands it starts use; the thread is
// discarded afterwards.
func inNetns(t *testing.T, f func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	if _, err := exec.LookPath("iptables-save"); err != nil {
		t.Skip("iptables is not installed")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		errc <- f()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestRestoreRulesUndoesDockersChanges: what saveHostState recorded comes
// back after dockerd-like changes, in both the tables that existed and one
// that did not (nat), and the saved record's tables keep their own rules.
func TestRestoreRulesUndoesDockersChanges(t *testing.T) {
	inNetns(t, func() error {
		k := &Kind{o: Options{RunDir: t.TempDir(), Log: io.Discard}}
		ctx := context.Background()
		ipt := func(args ...string) error {
			if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, out)
			}
			return nil
		}
		// The host before: one rule of its own in filter.
		if err := ipt("-A", "INPUT", "-s", "192.0.2.1", "-j", "DROP"); err != nil {
			return err
		}
		if err := k.saveHostState(ctx); err != nil {
			return err
		}
		// What dockerd does.
		for _, args := range [][]string{
			{"-P", "FORWARD", "DROP"}, {"-N", "DOCKER"}, {"-A", "FORWARD", "-j", "DOCKER"},
			{"-t", "nat", "-N", "DOCKER"}, {"-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "-j", "MASQUERADE"},
		} {
			if err := ipt(args...); err != nil {
				return err
			}
		}
		if err := k.restoreRules(ctx, false); err != nil {
			return err
		}
		out, err := exec.Command("iptables-save").Output()
		if err != nil {
			return err
		}
		s := string(out)
		if strings.Contains(s, "DOCKER") || strings.Contains(s, "MASQUERADE") || strings.Contains(s, ":FORWARD DROP") {
			return fmt.Errorf("after the restore:\n%s", s)
		}
		if !strings.Contains(s, "-A INPUT -s 192.0.2.1/32 -j DROP") {
			return fmt.Errorf("the host's own rule is gone:\n%s", s)
		}
		return nil
	})
}
