// Command kindcluster runs the end-to-end suite's kind clusters on machines
// without an image registry (see package kind).
//
//	kindcluster build                         build the node image's parts into the cache (no Docker)
//	kindcluster image                         make sure Docker has the node image; print its name
//	kindcluster up [--topology single|multi] [--image NAME|stock] [--import FILE.tar]...
//	                                          create the cluster (idempotent); print its kubeconfig
//	kindcluster down                          delete the clusters; stop dockerd if started here
//	kindcluster kubeconfig [--topology T]     print the kubeconfig path
//	kindcluster node [--topology T]           print the control plane's container name
//	kindcluster registry-reachable            exit 0 when kind's registries answer
//
// Started as accel-runc-capfix (a symlink dockerd runs), it is the runc
// wrapper that drops capabilities the host lacks.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/accel-device-plugin/accel-device-plugin/e2e/kind"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

const usage = `usage: kindcluster build | image | up [--topology single|multi] [--image NAME|stock] [--import FILE.tar]... | down | kubeconfig [--topology T] | node [--topology T] | registry-reachable`

func main() {
	if filepath.Base(os.Args[0]) == kind.RuncWrapperName {
		err := kind.RunRuncWrapper(os.Args[1:])
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "kindcluster: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

func run(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	topology := fs.String("topology", "single", "which cluster: single (one node) or multi (a control plane and two workers)")
	image := fs.String("image", os.Getenv("KIND_NODE_IMAGE"), "node image; empty: the offline one, built here; stock: kind's default (needs its registry)")
	var imports multi
	fs.Var(&imports, "import", "image archive to load into the nodes (repeatable)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w (%s)", err, usage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (%s)", fs.Arg(0), usage)
	}
	k, err := kind.New(kind.Options{})
	if err != nil {
		return err
	}
	t, err := kind.TopologyNamed(*topology)
	if err != nil {
		return err
	}
	switch cmd {
	case "build":
		return k.Build(ctx)
	case "image":
		name, err := k.Image(ctx)
		if err != nil {
			return err
		}
		fmt.Println(name)
	case "up":
		kc, err := k.Up(ctx, kind.UpOptions{Topology: t, NodeImage: *image, Imports: imports})
		if err != nil {
			return err
		}
		fmt.Println(kc)
	case "down":
		return k.Down(ctx)
	case "kubeconfig":
		fmt.Println(k.KubeconfigPath(t))
	case "node":
		fmt.Println(t.Cluster + "-control-plane")
	case "registry-reachable":
		if !kind.RegistryReachable(ctx) {
			return fmt.Errorf("kind's registries (registry-1.docker.io, registry.k8s.io) do not answer")
		}
	default:
		return fmt.Errorf("unknown command %q (%s)", cmd, usage)
	}
	return nil
}
