// Command localcluster runs the real single-node Kubernetes cluster the
// end-to-end tests use (see package cluster).
//
//	localcluster up [--import FILE.tar]...   bring it up (idempotent)
//	localcluster build                       only build what it runs into the cache
//	localcluster down                        tear it down (idempotent)
//	localcluster status                      what is running
//	localcluster restart-kubelet             restart kubelet, wait for Node Ready
//	localcluster kubeconfig                  print the admin kubeconfig path
//	localcluster ctr ARGS...                 run ctr (the cluster's containerd, namespace k8s.io)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/cluster"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

const usage = `usage: localcluster up [--import FILE.tar]... [--skip-packages] | build | down | status | restart-kubelet | kubeconfig | ctr ARGS...`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

func run(ctx context.Context, cmd string, args []string) error {
	var o cluster.Options
	if cmd == "ctr" { // its arguments are ctr's
		out, err := cluster.New(o).Ctr(ctx, args...)
		fmt.Print(out)
		return err
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	var imports multi
	if cmd == "up" {
		fs.Var(&imports, "import", "image archive to import into containerd (repeatable)")
		fs.BoolVar(&o.SkipPackages, "skip-packages", false, "do not check/install the Debian packages")
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w (%s)", err, usage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (%s)", fs.Arg(0), usage)
	}
	o.Imports = imports
	c := cluster.New(o)
	switch cmd {
	case "up":
		// A failed Up has torn down what it started; its error says why.
		if err := c.Up(ctx); err != nil {
			return err
		}
		fmt.Println(c.AdminKubeconfig())
	case "build":
		return c.Build(ctx)
	case "down":
		return c.Down(ctx)
	case "restart-kubelet":
		return c.RestartKubelet(ctx)
	case "status":
		comps, node, ok := c.Status(ctx)
		for _, s := range comps {
			state := "not running"
			if s.Running {
				state = fmt.Sprintf("running (pid %d)", s.PID)
			}
			fmt.Printf("%-24s %-20s %s\n", s.Name, state, s.Log)
		}
		fmt.Println(node)
		fmt.Println("kubeconfig", c.AdminKubeconfig())
		if !ok {
			return fmt.Errorf("the cluster is not (fully) up: `localcluster up` brings it up")
		}
	case "kubeconfig":
		fmt.Println(c.AdminKubeconfig())
	default:
		return fmt.Errorf("unknown command %q (%s)", cmd, usage)
	}
	return nil
}
