// Command kubelet-view runs kubelet's real device manager (alone, in a
// private mount namespace) with a device plugin, and prints what kubelet
// sees: capacity and allocatable per resource whenever they change, and
// what the containers of the given pods receive. `make demo` uses it.
//
//	kubelet-view [--pod NAME=RESOURCE:N]... -- accel-plugin serve [flags]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/kubelet"
)

type podSpec struct {
	name, res string
	count     int64
}

type podFlags []podSpec

func (p *podFlags) String() string { return fmt.Sprint(*p) }
func (p *podFlags) Set(v string) error {
	name, rest, ok1 := strings.Cut(v, "=")
	res, n, ok2 := strings.Cut(rest, ":")
	count, err := strconv.ParseInt(n, 10, 64)
	if !ok1 || !ok2 || name == "" || res == "" || err != nil || count < 1 {
		return fmt.Errorf("want NAME=RESOURCE:COUNT such as train=accel.io/ac:2, got %q", v)
	}
	*p = append(*p, podSpec{name, res, count})
	return nil
}

func main() {
	if !kubelet.InPrivateNamespace() {
		code, err := kubelet.ReexecInPrivateNamespace()
		if err != nil {
			fmt.Fprintln(os.Stderr, "kubelet-view:", err)
		}
		os.Exit(code)
	}
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kubelet-view:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("kubelet-view", flag.ContinueOnError)
	var pods podFlags
	fs.Var(&pods, "pod", "admit a one-container pod NAME=RESOURCE:COUNT once the resource is allocatable (repeatable)")
	numa := fs.Int("numa-nodes", 2, "NUMA nodes of the simulated machine")
	pluginLog := fs.String("plugin-log", "", "file for the plugin's log (default: discarded)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("no plugin command after --")
	}
	if err := kubelet.PrivateDevicePluginDir(); err != nil {
		return err
	}
	node := &kubelet.Node{Logger: logr.Discard(), NUMANodes: *numa}
	if err := node.Start(); err != nil {
		return err
	}
	defer func() { _ = node.Stop() }() // the view is over: nothing left to report to

	plugin := exec.Command(fs.Arg(0), fs.Args()[1:]...)
	plugin.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if *pluginLog != "" {
		f, err := os.Create(*pluginLog)
		if err != nil {
			return err
		}
		defer f.Close()
		plugin.Stdout, plugin.Stderr = f, f
	}
	if err := plugin.Start(); err != nil {
		return fmt.Errorf("start plugin: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- plugin.Wait() }()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Fprintf(out, "kubelet: device manager listening on /var/lib/kubelet/device-plugins/kubelet.sock (private mount namespace)\n")
	last := ""
	tick := time.NewTicker(20 * time.Millisecond) // kubelet, too, polls GetCapacity for the node status
	defer tick.Stop()
	for {
		caps := node.Capacity()
		if line := capacityLine(caps); line != last {
			fmt.Fprintf(out, "kubelet: %s\n", line)
			last = line
		}
		for len(pods) > 0 && caps[pods[0].res].Allocatable > 0 {
			admit(out, node, pods[0])
			pods = pods[1:]
		}
		select {
		case <-ctx.Done():
			_ = plugin.Process.Signal(syscall.SIGTERM)
			err := <-exited
			fmt.Fprintf(out, "kubelet: plugin stopped (%v)\n", exitStatus(err))
			// kubelet notices the closed streams and zeroes allocatable.
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) && last == capacityLine(node.Capacity()) {
				<-tick.C
			}
			fmt.Fprintf(out, "kubelet: %s\n", capacityLine(node.Capacity()))
			return nil
		case err := <-exited:
			return fmt.Errorf("plugin exited: %v", exitStatus(err))
		case <-tick.C:
		}
	}
}

func capacityLine(caps map[string]kubelet.Resources) string {
	if len(caps) == 0 {
		return "no device-plugin resources registered"
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range caps {
			if !yield(k) {
				return
			}
		}
	})
	var parts []string
	for _, name := range names {
		parts = append(parts, fmt.Sprintf("%s capacity=%d allocatable=%d", name, caps[name].Capacity, caps[name].Allocatable))
	}
	return strings.Join(parts, "  |  ")
}

func admit(out io.Writer, node *kubelet.Node, p podSpec) {
	opts, _, err := node.Admit(p.name, p.res, p.count)
	if err != nil {
		fmt.Fprintf(out, "kubelet: pod %s (%s: %d) not admitted: %v\n", p.name, p.res, p.count, err)
		return
	}
	var env []string
	for _, e := range opts.Envs {
		env = append(env, e.Name+"="+e.Value)
	}
	slices.Sort(env)
	fmt.Fprintf(out, "kubelet: pod %s (%s: %d) admitted; its container gets %s\n", p.name, p.res, p.count, strings.Join(env, " "))
	for _, m := range opts.Mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		fmt.Fprintf(out, "           mount %s -> %s (%s)\n", m.HostPath, m.ContainerPath, mode)
	}
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}
