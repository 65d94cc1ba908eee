// Command soak brings the local cluster down and up again and again, runs
// the end-to-end suite in between, and reports what failed and how long
// each step took. Run it as root from the repository (after `make
// cluster-up` built the binaries and the image):
//
//	go -C e2e run ./cmd/soak --repo .. [--cycles 30] [--e2e-every 6] [--trace-signals]
//
// A cycle is `localcluster down` then `localcluster up`; it fails when
// either fails, when `localcluster status` is not OK after up, or when
// anything of the cluster is left after down (a PID file, or a process
// whose command line names the cluster's directories). Before the cycles
// (unless --failed-up=false) it makes one up fail on purpose (etcd's peer
// port taken) and checks that the failed up left nothing behind. After every
// e2e-every-th cycle it runs the e2e command (default `make e2e`). With
// --trace-signals it records, through the kernel's signal_generate trace
// event, every SIGTERM and SIGKILL sent to a cluster component, and
// reports those that neither localcluster nor the component itself sent.
// Logs of failed steps go to --out.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

const tracing = "/sys/kernel/tracing"

type config struct {
	repo, localcluster, image, e2eCmd, out string
	cycles, e2eEvery                       int
	traceSignals, failedUp                 bool
}

func main() {
	var c config
	flag.StringVar(&c.repo, "repo", ".", "repository root (where `make e2e` runs)")
	flag.StringVar(&c.localcluster, "localcluster", "bin/localcluster", "localcluster binary, relative to --repo")
	flag.StringVar(&c.image, "import", "", "image archive `up` imports, relative to --repo (default _output/accel-device-plugin-$(cat VERSION).tar, as make builds it)")
	flag.StringVar(&c.e2eCmd, "e2e-cmd", "make e2e", "shell command running the e2e suite, in --repo")
	flag.StringVar(&c.out, "out", "/tmp/accel-soak", "directory for the logs of failed steps and e2e runs")
	flag.IntVar(&c.cycles, "cycles", 30, "down/up cycles")
	flag.IntVar(&c.e2eEvery, "e2e-every", 6, "run the e2e command after every N-th cycle (0: never)")
	flag.BoolVar(&c.traceSignals, "trace-signals", false, "record SIGTERM/SIGKILL sent to cluster components (kernel tracing)")
	flag.BoolVar(&c.failedUp, "failed-up", true, "first check that an up that fails (etcd's peer port taken) leaves nothing behind")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root (the local cluster needs it)")
	}
	repo, err := filepath.Abs(c.repo)
	if err != nil {
		return err
	}
	lc := filepath.Join(repo, c.localcluster)
	if c.image == "" {
		chart, err := cluster.ReadChart(repo)
		if err != nil {
			return err
		}
		c.image = filepath.Join("_output", "accel-device-plugin-"+chart.Version+".tar")
	}
	image := filepath.Join(repo, c.image)
	for _, f := range []string{lc, image} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s: %w (run `make cluster-up` first)", f, err)
		}
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	if c.traceSignals {
		restore, err := traceSignals()
		if err != nil {
			return fmt.Errorf("trace signals: %w", err)
		}
		defer restore()
	}
	var downs, ups, cycles, e2es []time.Duration
	var failures []string
	fail := func(what string, err error, out []byte) {
		dir := filepath.Join(c.out, fmt.Sprintf("failure-%d", len(failures)+1))
		msg := fmt.Sprintf("%s: %v (logs in %s)", what, err, dir)
		failures = append(failures, msg)
		fmt.Println("FAIL", msg)
		saveLogs(dir, out)
	}
	if c.failedUp {
		if err := checkFailedUp(ctx, repo, lc, image); err != nil {
			fail("failed-up check", err, nil)
		} else {
			fmt.Println("failed-up check: up failed as it should and left nothing behind")
		}
	}
	start := time.Now()
	for i := 1; i <= c.cycles && ctx.Err() == nil; i++ {
		t0 := time.Now()
		out, err := runCmd(ctx, repo, lc, "down")
		downs = append(downs, time.Since(t0))
		if err == nil {
			err = leftovers()
		}
		if err != nil {
			fail(fmt.Sprintf("cycle %d: down", i), err, out)
		}
		t1 := time.Now()
		out, err = runCmd(ctx, repo, lc, "up", "--skip-packages", "--import", image)
		ups = append(ups, time.Since(t1))
		if err == nil {
			var st []byte
			if st, err = runCmd(ctx, repo, lc, "status"); err != nil {
				out = append(out, st...)
			}
		}
		cycles = append(cycles, time.Since(t0))
		if err != nil {
			fail(fmt.Sprintf("cycle %d: up", i), err, out)
		}
		fmt.Printf("cycle %2d: down %5.1fs, up %5.1fs%s\n", i, downs[len(downs)-1].Seconds(), ups[len(ups)-1].Seconds(), failed(err))
		if c.e2eEvery > 0 && i%c.e2eEvery == 0 && ctx.Err() == nil {
			t2 := time.Now()
			out, err := runCmd(ctx, repo, "sh", "-c", c.e2eCmd)
			d := time.Since(t2)
			e2es = append(e2es, d)
			log := filepath.Join(c.out, fmt.Sprintf("e2e-after-cycle-%d.log", i))
			_ = os.WriteFile(log, out, 0o644)
			if err != nil {
				fail(fmt.Sprintf("e2e after cycle %d", i), err, out)
			}
			fmt.Printf("e2e after cycle %d: %.1fs%s (log %s)%s\n", i, d.Seconds(), failed(err), log, summary(out))
		}
	}
	fmt.Printf("\n%d cycles in %s, %d e2e runs, %d failures\n", len(cycles), time.Since(start).Round(time.Second), len(e2es), len(failures))
	fmt.Printf("down:  median %.1fs, max %.1fs\n", median(downs), maxOf(downs))
	fmt.Printf("up:    median %.1fs, max %.1fs\n", median(ups), maxOf(ups))
	fmt.Printf("cycle: median %.1fs, max %.1fs\n", median(cycles), maxOf(cycles))
	if len(e2es) > 0 {
		var s []string
		for _, d := range e2es {
			s = append(s, fmt.Sprintf("%.0fs", d.Seconds()))
		}
		fmt.Printf("e2e:   %s\n", strings.Join(s, ", "))
	}
	if c.traceSignals {
		fmt.Print(signalReport())
	}
	for _, f := range failures {
		fmt.Println("FAIL", f)
	}
	if len(failures) > 0 {
		return fmt.Errorf("%d failures", len(failures))
	}
	return ctx.Err()
}

// checkFailedUp makes up fail (etcd cannot bind its peer port) and checks
// that it left nothing running and no PID file.
func checkFailedUp(ctx context.Context, repo, lc, image string) error {
	if out, err := runCmd(ctx, repo, lc, "down"); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:12380")
	if err != nil {
		return fmt.Errorf("take etcd's peer port: %w", err)
	}
	out, err := runCmd(ctx, repo, lc, "up", "--skip-packages", "--import", image)
	l.Close()
	if err == nil {
		return errors.New("up succeeded with etcd's peer port taken")
	}
	if !strings.Contains(string(out), "etcd") {
		return fmt.Errorf("up failed, but not because of etcd: %s", lastLine(string(out)))
	}
	return leftovers()
}

func failed(err error) string {
	if err != nil {
		return "  FAILED"
	}
	return ""
}

// summary picks the suite's own summary lines out of its output.
func summary(out []byte) string {
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "rejections") || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "ok ") {
			keep = append(keep, "\n    "+strings.TrimSpace(l))
		}
	}
	return strings.Join(keep, "")
}

func runCmd(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, lastLine(b.String()))
	}
	return b.Bytes(), err
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// leftovers: after down, nothing of the cluster left (Cluster.Leftovers:
// no PID file, no process naming the cluster's directories).
func leftovers() error {
	if left := cluster.New(cluster.Options{}).Leftovers(); len(left) > 0 {
		return fmt.Errorf("left after down: %s", strings.Join(left, "; "))
	}
	return nil
}

// saveLogs keeps the command's output and the components' logs.
func saveLogs(dir string, out []byte) {
	_ = os.MkdirAll(dir, 0o755)
	_ = os.WriteFile(filepath.Join(dir, "output.txt"), out, 0o644)
	logs, _ := filepath.Glob(filepath.Join(cluster.New(cluster.Options{}).Options().LogDir, "*.log*"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil {
			_ = os.WriteFile(filepath.Join(dir, filepath.Base(l)), b, 0o644)
		}
	}
}

var componentComms = []string{"etcd", "containerd", "kube-apiserver", "kube-controller", "kube-scheduler", "kubelet"}

// traceSignals enables the signal_generate event for SIGTERM and SIGKILL
// to the components; restore puts tracing back as it was.
func traceSignals() (restore func(), err error) {
	ev := tracing + "/events/signal/signal_generate"
	if _, err := os.Stat(ev); err != nil {
		if err := syscall.Mount("nodev", tracing, "tracefs", 0, ""); err != nil {
			return nil, fmt.Errorf("mount tracefs on %s: %w", tracing, err)
		}
	}
	oldFilter, _ := os.ReadFile(ev + "/filter")
	oldEnable, _ := os.ReadFile(ev + "/enable")
	var comms []string
	for _, c := range componentComms {
		comms = append(comms, fmt.Sprintf("comm == %q", c))
	}
	filter := "(sig == 9 || sig == 15) && (" + strings.Join(comms, " || ") + ")"
	if err := os.WriteFile(ev+"/filter", []byte(filter), 0); err != nil {
		return nil, fmt.Errorf("set the filter: %w", err)
	}
	if err := os.WriteFile(tracing+"/trace", nil, 0); err != nil { // clear
		return nil, err
	}
	if err := os.WriteFile(ev+"/enable", []byte("1"), 0); err != nil {
		return nil, err
	}
	return func() {
		_ = os.WriteFile(ev+"/enable", bytes.TrimSpace(oldEnable), 0)
		f := strings.TrimSpace(string(oldFilter))
		if f == "" || f == "none" {
			f = "0"
		}
		_ = os.WriteFile(ev+"/filter", []byte(f), 0)
	}, nil
}

// signalReport sums up the recorded signals by sender and target, and
// lists those neither localcluster nor the target itself sent.
func signalReport() string {
	b, err := os.ReadFile(tracing + "/trace")
	if err != nil {
		return "signals: " + err.Error() + "\n"
	}
	counts := map[string]int{}
	var odd []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "#") || !strings.Contains(l, "signal_generate:") {
			continue
		}
		sender := strings.Fields(l)[0] // comm-tid
		sig, target := field(l, "sig="), field(l, "comm=")
		name := sender
		if i := strings.LastIndexByte(sender, '-'); i > 0 {
			name = sender[:i]
		}
		counts[fmt.Sprintf("%-16s -> %-16s sig %s", name, target, sig)]++
		// A component re-raising a signal to itself (Go programs do, after
		// their handlers ran) has the target's name.
		if name != "localcluster" && name != target {
			odd = append(odd, strings.TrimSpace(l))
		}
	}
	var keys []string
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var s strings.Builder
	s.WriteString("signals to components (sender -> target), from the kernel's signal_generate events:\n")
	for _, k := range keys {
		fmt.Fprintf(&s, "  %5d  %s\n", counts[k], k)
	}
	fmt.Fprintf(&s, "sent by neither localcluster nor the component itself: %d\n", len(odd))
	for _, l := range odd {
		fmt.Fprintf(&s, "  %s\n", l)
	}
	return s.String()
}

func field(line, key string) string {
	i := strings.Index(line, key)
	if i < 0 {
		return ""
	}
	f := strings.Fields(line[i+len(key):])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func median(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2].Seconds()
}

func maxOf(d []time.Duration) float64 {
	var m time.Duration
	for _, x := range d {
		if x > m {
			m = x
		}
	}
	return m.Seconds()
}
