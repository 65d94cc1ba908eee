package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

func runServe(args []string, stderr io.Writer) error {
	fs := newFlagSet("serve", "serve [flags]", stderr)
	var cfg plugin.Config
	fs.StringVar(&cfg.DevDir, "dev-dir", "/run/accel/dev", "directory where this process sees the simulated device nodes (a running `accel-plugin sim --dir`); empty: no simulated devices")
	fs.StringVar(&cfg.HostDevDir, "host-dev-dir", "", "the same directory as the host (kubelet, container runtime) sees it; default: --dev-dir")
	fs.StringVar(&cfg.KernelClassDir, "kernel-class-dir", "/sys/class/accel", "sysfs class directory of the kernel's accel devices (Linux 6.2+); empty: no kernel devices")
	fs.StringVar(&cfg.KernelDevDir, "kernel-dev-dir", "/dev/accel", "directory of the kernel's accel device nodes (accelN), the same on the host")
	fs.StringVar(&cfg.KubeletDir, "kubelet-dir", "/var/lib/kubelet/device-plugins", "kubelet's device-plugin directory (holds kubelet.sock; our sockets go here)")
	fs.StringVar(&cfg.ResourcePrefix, "resource-prefix", "accel.io", "resource name prefix: resources are PREFIX/ac and PREFIX/ac-monitor")
	fs.IntVar(&cfg.MonitorSlots, "monitor-slots", 8, fmt.Sprintf("PREFIX/ac-monitor units per device (shared monitor access), 0 to %d; 0 disables the resource", plugin.MaxMonitorSlots))
	fs.DurationVar(&cfg.Resync, "resync", 30*time.Second, "safety-net interval for re-reading every device (changes arrive as events, at once)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	cfg.Logger = log
	p, err := plugin.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	names := make([]string, len(p.Resources))
	for i, r := range p.Resources {
		names[i] = r.Name
	}
	log.Info("device plugin starting", "dev_dir", cfg.DevDir, "kubelet_dir", cfg.KubeletDir, "resources", names)
	err = p.Run(ctx)
	log.Info("device plugin stopped; sockets removed")
	return err
}
