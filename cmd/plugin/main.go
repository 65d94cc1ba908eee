// Command accel-plugin is the single binary of accel-device-plugin.
//
//	accel-plugin sim      run simulated accel devices and expose their nodes
//	accel-plugin serve    run the Kubernetes device plugin for the devices in a directory
//	accel-plugin unlabel-nodes  remove the plugin's labels from every node
//	accel-plugin sim ctl  inject faults, reset, hot-plug into a running simulator
//	accel-plugin events   print device events as they happen
//	accel-plugin info     print the info of device nodes as JSON
//	accel-plugin list     print a table of the devices in a directory
//	accel-plugin wait     wait until a directory holds a live simulator (the chart's init container)
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

const usage = `accel-plugin: Kubernetes device plugin for accel-subsystem compute accelerators

usage:
  accel-plugin sim --devices N --dir DIR      run N simulated devices, nodes mounted on DIR
  accel-plugin sim ctl --dir DIR COMMAND...   control a running simulator (fault, recover, reset, add, remove)
  accel-plugin serve [--dev-dir DIR]          advertise the devices in DIR to kubelet (accel.io/ac, accel.io/ac-monitor)
  accel-plugin unlabel-nodes                  remove PREFIX/ac.* labels from every node (the chart's uninstall hook)
  accel-plugin events --dir DIR               print device events as JSON lines as they happen
  accel-plugin info PATH...                   print each node's info as one JSON object per line
  accel-plugin list --dir DIR                 print a table of the devices in DIR
  accel-plugin wait --dir DIR [--timeout 5m]  exit 0 once DIR holds a live simulator, 1 on timeout

Run "accel-plugin COMMAND --help" for a command's flags.
`

// errUsage marks errors whose message already says what to type instead.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	name := args[0]
	switch cmd, rest := args[0], args[1:]; cmd {
	case "sim":
		if len(rest) > 0 && rest[0] == "ctl" {
			name = "sim ctl"
			err = runSimCtl(rest[1:], stdout, stderr)
		} else {
			err = runSim(rest, stderr)
		}
	case "serve":
		err = runServe(rest, stderr)
	case "unlabel-nodes":
		err = runUnlabelNodes(rest, stderr)
	case "events":
		err = runEvents(rest, stdout, stderr)
	case "info":
		err = runInfo(rest, stdout, stderr)
	case "list":
		err = runList(rest, stdout, stderr)
	case "wait":
		err = runWait(rest, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "accel-plugin: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "accel-plugin %s: %v\n", name, err)
	return 1
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: accel-plugin %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, mapping flag errors to errUsage (the flag
// package has already printed them with the usage).
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

// newLogger returns a structured logger on w at the named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
