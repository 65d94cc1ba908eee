package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfs"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/fakedev"
)

// maxMemoryGiB is the largest --memory-gib (1 PiB, the chart schema's
// maximum); it keeps the byte count, memory-gib << 30, far from overflowing.
const maxMemoryGiB = 1 << 20

func runSim(args []string, stderr io.Writer) error {
	fs := newFlagSet("sim", "sim [--devices N | --driver NAME:N,...] --dir DIR [flags]\n\nSimulated drivers (all register on one accel core):\n"+fakedev.DriverHelp(), stderr)
	devices := fs.Int("devices", 4, "number of simulated devices at start, of the default driver fakedev (0-256; more can be hot-plugged with \"sim ctl add\")")
	driverMix := fs.String("driver", "", "devices at start by driver, NAME[:COUNT][,NAME[:COUNT]...], e.g. fakedev:2,fakenpu:2 (a name alone: one device); replaces --devices")
	dir := fs.String("dir", "/run/accel/dev", "empty directory to mount the device nodes on (created if missing)")
	seed := fs.String("seed", "accel-sim", "seed of the device serials: same seed, slot and driver, same serial on every run")
	model := fs.String("model", "", "model name every device reports (default: each driver's own, \"Simulated Accel SA-1\" and \"Simulated NPU SN-1\")")
	throughput := fs.Uint64("throughput", fakedev.DefaultThroughput, "bytes a device's job moves per second (fakenpu: multiply-accumulates), 1 to 2^50, so jobs take real time (1073741824: 1 GiB/s)")
	memGiB := fs.Uint64("memory-gib", 16, fmt.Sprintf("memory per device, GiB (1-%d)", maxMemoryGiB))
	budgetMiB := fs.Uint64("memory-budget-mib", 1024, "device memory all devices' buffers may hold together, MiB (0: no cap). Simulated device memory is the simulator's own memory: keep this below the simulator's memory limit, or a client filling its device gets the simulator killed; past it an allocation fails with ENOMEM")
	numa := fs.Int("numa-nodes", 1, "spread devices round-robin over this many NUMA nodes")
	resetDur := fs.Duration("reset-duration", 100*time.Millisecond, "how long a reset keeps a device in_reset")
	computeMode := fs.String("compute-mode", "0666", "permission of compute nodes, 3 octal digits with an optional leading 0, at most 0777 (0000 is honoured; e.g. 0660 with --gid)")
	dirMode := fs.String("dir-mode", "0700", "permission of the mount's root directory (root-owned, group --gid), same rules: 0700 keeps host users who are not root away from the nodes, while a container that has a node bind-mounted opens it by the node's own mode")
	gid := fs.Uint("gid", 0, "group owning the device nodes and the mount's root directory (for 0660 / 0750 setups)")
	perProc := fs.Int("monitor-opens-per-process", accel.DefaultMonitorOpensPerProcess,
		fmt.Sprintf("open files of one device's monitor node a single process may hold; the next open fails with EMFILE (1-%d)", accel.MaxMonitorOpensPerProcess))
	perDev := fs.Int("monitor-opens-per-device", accel.DefaultMonitorOpensPerDevice,
		fmt.Sprintf("open monitor files per device in all; the next open fails with EMFILE (1-%d)", accel.MaxMonitorOpensPerDevice))
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (did you mean `accel-plugin sim ctl ...`?)", fs.Arg(0))
	}
	if *devices < 0 || *devices > accel.MaxDevices {
		return fmt.Errorf("--devices %d is out of range: want 0 to %d", *devices, accel.MaxDevices)
	}
	mix := []fakedev.DriverCount{{Driver: fakedev.DriverName, Count: *devices}}
	if flagSet(fs, "driver") {
		if flagSet(fs, "devices") {
			return fmt.Errorf("--devices and --driver both say how many devices to start: give one (--driver %s:%d)", fakedev.DriverName, *devices)
		}
		var err error
		if mix, err = fakedev.ParseDriverMix(*driverMix); err != nil {
			return fmt.Errorf("--driver: %w", err)
		}
	}
	if *throughput < 1 || *throughput > 1<<50 {
		return fmt.Errorf("--throughput %d is out of range: want 1 to %d bytes per second", *throughput, int64(1<<50))
	}
	if *budgetMiB > maxMemoryGiB<<10 {
		return fmt.Errorf("--memory-budget-mib %d is out of range: want 0 to %d", *budgetMiB, uint64(maxMemoryGiB<<10))
	}
	if *numa < 1 || *numa > 64 {
		return fmt.Errorf("--numa-nodes %d is out of range: want 1 to 64", *numa)
	}
	if *memGiB == 0 || *memGiB > maxMemoryGiB {
		return fmt.Errorf("--memory-gib %d is out of range: want 1 to %d", *memGiB, maxMemoryGiB)
	}
	if *resetDur <= 0 || *resetDur > time.Minute {
		return fmt.Errorf("--reset-duration %s is out of range: want more than 0 and at most 1m", *resetDur)
	}
	cmode, err := devfs.ParseMode(*computeMode)
	if err != nil {
		return fmt.Errorf("--compute-mode: %w", err)
	}
	dmode, err := devfs.ParseMode(*dirMode)
	if err != nil {
		return fmt.Errorf("--dir-mode: %w", err)
	}
	if *gid > math.MaxUint32-1 {
		return fmt.Errorf("--gid %d is out of range: want 0 to %d", *gid, uint64(math.MaxUint32-1))
	}
	if *perProc < 1 || *perProc > accel.MaxMonitorOpensPerProcess {
		return fmt.Errorf("--monitor-opens-per-process %d is out of range: want 1 to %d", *perProc, accel.MaxMonitorOpensPerProcess)
	}
	if *perDev < 1 || *perDev > accel.MaxMonitorOpensPerDevice {
		return fmt.Errorf("--monitor-opens-per-device %d is out of range: want 1 to %d", *perDev, accel.MaxMonitorOpensPerDevice)
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}

	// Catch signals before the mount exists: a SIGTERM right after the
	// "simulator running" line must unmount, not kill the process and
	// leave a dead mount behind.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	reg := accel.NewRegistry(accel.Options{
		MonitorOpensPerProcess: *perProc, MonitorOpensPerDevice: *perDev, MemoryBudget: *budgetMiB << 20, Logger: log,
	})
	sim := fakedev.New(reg, fakedev.Config{
		Seed: *seed, Model: *model, MemoryTotal: *memGiB << 30, NUMANodes: *numa,
		ResetDuration: *resetDur, Throughput: float64(*throughput), Logger: log,
	})
	// The mountpoint first: a --dir that cannot be used is the error,
	// before any device is logged as registered.
	if err := devfs.CheckMountpoint(*dir); err != nil {
		return err
	}
	started := 0
	for _, dc := range mix {
		if dc.Count == 0 {
			continue
		}
		if _, err := sim.AddDriver(dc.Driver, dc.Count); err != nil {
			return err
		}
		started += dc.Count
	}
	srv, err := devfs.Mount(*dir, reg, devfs.Options{
		ComputeMode: devfs.Mode(cmode), DirMode: devfs.Mode(dmode), GID: uint32(*gid), Control: sim, Logger: log,
	})
	if err != nil {
		return err
	}
	log.Info("simulator running", "dir", srv.Dir(), "devices", started, "seed", *seed,
		"control", fmt.Sprintf("accel-plugin sim ctl --dir %s COMMAND", srv.Dir()))

	unmounted := make(chan struct{})
	go func() { srv.Wait(); close(unmounted) }()
	select {
	case <-ctx.Done():
		log.Info("signal received; unmounting", "dir", srv.Dir())
	case <-unmounted:
		log.Warn("mount went away (unmounted from outside); exiting", "dir", srv.Dir())
	}
	reg.Close()
	return srv.Unmount(2 * time.Second)
}

func runSimCtl(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sim ctl", "sim ctl --dir DIR COMMAND [ARGS]\n\n"+fakedev.ControlUsage+
		fmt.Sprintf("\n\nThe command is written to DIR/sys/control as one line (at most %d bytes); the simulator\n"+
			"accepts it only from a caller with CAP_SYS_ADMIN (root on the host, or a privileged container).", devfsclient.MaxControlLine), stderr)
	dir := fs.String("dir", "/run/accel/dev", "directory a running \"accel-plugin sim\" serves")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	out, err := devfsclient.Control(*dir, strings.Join(fs.Args(), " "))
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, out)
	return nil
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
