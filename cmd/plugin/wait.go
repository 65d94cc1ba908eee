package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
)

// waitPollInterval is how often `wait` looks for the simulator.
const waitPollInterval = 200 * time.Millisecond

// runWait implements `accel-plugin wait`, the chart's init container: it
// returns nil as soon as DIR holds a live simulator, and an error naming
// what it last saw when --timeout passes first.
func runWait(args []string, stderr io.Writer) error {
	fs := newFlagSet("wait", "wait --dir DIR [--timeout 5m]\n\n"+
		"Exits 0 as soon as DIR holds a live simulator (DIR/sys/events is there and answers stat),\n"+
		"1 when --timeout passes first. Every stat is bounded by --timeout, so a frozen simulator\n"+
		"cannot hang it.", stderr)
	dir := fs.String("dir", "/run/accel/dev", "the simulator's directory (what \"accel-plugin sim --dir\" mounts)")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if !filepath.IsAbs(*dir) {
		return fmt.Errorf("--dir must be an absolute path, got %q", *dir)
	}
	if *timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %s", *timeout)
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	if err := waitForSimulator(ctx, filepath.Clean(*dir), waitPollInterval, statProbe, log); err != nil {
		return err
	}
	log.Info("simulator is live", "dir", *dir, "waited", time.Since(start).Round(time.Millisecond))
	return nil
}

// statProbe is the liveness probe of a simulator: stat of its sys/events.
func statProbe(path string) error {
	_, err := os.Stat(path)
	return err
}

// waitForSimulator returns nil once probe(dir/sys/events) succeeds, and an
// error when ctx ends first: the probe's last error, or that the probe has
// not answered (a frozen FUSE daemon blocks stat in the kernel until it
// answers or dies).
//
// It polls every interval: a FUSE mount appearing on dir produces no
// inotify event (mount(2) is no change to a directory's entries), and a
// wake-up from /proc/self/mountinfo would still not say that the daemon
// answers. An init container waits once per pod start, so a short poll
// costs nothing.
//
// At most one probe runs at a time, in its own goroutine so that the
// deadline is kept even when it never returns; such a goroutine is
// abandoned (the process exits right after).
func waitForSimulator(ctx context.Context, dir string, interval time.Duration, probe func(string) error, log *slog.Logger) error {
	path := filepath.Join(dir, devfsclient.SysDir, devfsclient.EventsFile)
	start := time.Now()
	gaveUp := func() string {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Sprintf("no live simulator on %s after %s", dir, time.Since(start).Round(time.Millisecond))
		}
		return fmt.Sprintf("interrupted while waiting for a simulator on %s", dir)
	}
	var last error
	for {
		began := time.Now()
		answer := make(chan error, 1) // buffered: an abandoned probe can still finish
		go func() { answer <- probe(path) }()
		select {
		case err := <-answer:
			if err == nil {
				return nil
			}
			if last == nil || err.Error() != last.Error() {
				log.Info("waiting for the simulator", "dir", dir, "reason", describeProbeError(err))
			}
			last = err
		case <-ctx.Done():
			// A probe started just before the deadline says nothing about
			// the daemon: then the last answer is the news.
			if pending := time.Since(began); last == nil || pending >= interval {
				return fmt.Errorf("%s: stat %s has not answered for %s: the simulator is not responding (stopped or frozen?)",
					gaveUp(), path, pending.Round(time.Millisecond))
			}
			return fmt.Errorf("%s: %s", gaveUp(), describeProbeError(last))
		}
		timer := time.NewTimer(interval)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%s: %s", gaveUp(), describeProbeError(last))
		}
	}
}

// describeProbeError says what a failed probe means for the operator.
func describeProbeError(err error) string {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Sprintf("%v (the simulator has not mounted yet: is its pod running on this node?)", err)
	case errors.Is(err, syscall.ENOTCONN):
		return fmt.Sprintf("%v (a dead mount: the simulator exited without unmounting; see the chart README, Operations)", err)
	}
	return err.Error()
}
