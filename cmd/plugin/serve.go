package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/dra"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/nodelabel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/uninstall"
)

func runServe(args []string, stderr io.Writer) error {
	fs := newFlagSet("serve", "serve [flags]", stderr)
	var cfg plugin.Config
	fs.StringVar(&cfg.DevDir, "dev-dir", "/run/accel/dev", "directory where this process sees the simulated device nodes (what a running \"accel-plugin sim --dir\" mounts); empty: no simulated devices")
	fs.StringVar(&cfg.HostDevDir, "host-dev-dir", "", "the same directory as the host (kubelet, container runtime) sees it; default: --dev-dir")
	fs.StringVar(&cfg.KernelClassDir, "kernel-class-dir", "/sys/class/accel", "sysfs class directory of the kernel's accel devices (Linux 6.2+); empty: no kernel devices")
	fs.StringVar(&cfg.KernelDevDir, "kernel-dev-dir", "/dev/accel", "directory of the kernel's accel device nodes (accelN), the same on the host")
	api := fs.String("api", "device-plugin", "the Kubernetes API that hands the devices out: device-plugin (extended resources PREFIX/ac and PREFIX/ac-monitor) or dra (a DRA driver named PREFIX: ResourceSlices, claims, CDI); one per node, never both")
	fs.StringVar(&cfg.KubeletDir, "kubelet-dir", "/var/lib/kubelet/device-plugins", "kubelet's device-plugin directory (holds kubelet.sock; our sockets go here); --api=device-plugin")
	draPluginDir := fs.String("dra-plugin-dir", "", "the DRA driver's directory: its socket and its checkpoint of prepared claims, on disk (default "+dra.DefaultPluginsDir+"/PREFIX); --api=dra")
	draRegistrarDir := fs.String("dra-registrar-dir", dra.DefaultRegistrarDir, "kubelet's plugin registry, where the DRA driver registers; --api=dra")
	podUID := fs.String("pod-uid", os.Getenv("POD_UID"), "this pod's UID (default: $POD_UID, from the downward API): with --api=dra, a new driver pod then starts beside the old one in a rolling update (kubelet 1.33+)")
	fs.StringVar(&cfg.ResourcePrefix, "resource-prefix", "accel.io", "resource name prefix: resources are PREFIX/ac and PREFIX/ac-monitor")
	fs.IntVar(&cfg.MonitorSlots, "monitor-slots", 8, fmt.Sprintf("PREFIX/ac-monitor units per device (shared monitor access), 0 to %d; 0 disables the resource; with --api=dra, the clients capacity of each monitor device (claims sharing it)", plugin.MaxMonitorSlots))
	fs.DurationVar(&cfg.Resync, "resync", 30*time.Second, "safety-net interval for re-reading every device (changes arrive as events, at once)")
	fs.DurationVar(&cfg.KernelResync, "kernel-resync", plugin.DefaultKernelResync, "safety-net interval for re-reading every kernel device while kernel uevents are received (uevents and inotify carry every change; a lost event re-reads at once); without uevents, --resync applies")
	fs.StringVar(&cfg.PodResourcesSocket, "pod-resources-socket", plugin.DefaultPodResourcesSocket, "kubelet's pod-resources socket, asked at each /metrics scrape which pods hold which devices (accel_device_holder); empty: not asked")
	fs.DurationVar(&cfg.StatusPoll, "status-poll", plugin.DefaultStatusPoll, "period of reading the status attribute of kernel drivers that send no event when it changes (habanalabs), 100ms to 1h")
	fs.DurationVar(&cfg.DaemonTimeout, "daemon-timeout", plugin.DefaultDaemonTimeout, fmt.Sprintf("bound on every access to the device daemon (readdir, stat, open, info ioctl, events) and on a scrape's reads of it, %s to %s; a daemon that does not answer within it has all its devices unhealthy (\"device daemon not responding\") and /readyz fails", plugin.MinDaemonTimeout, plugin.MaxDaemonTimeout))
	fs.DurationVar(&cfg.StaleViewGrace, "stale-view-grace", 10*time.Second, "exit 1 when the device daemon's mount has been dead or absent this long and this container's view of --dev-dir has no mount propagation from the host (it would never see the simulator's new mount; kubelet restarts the container); 0: never exit")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9490", "host:port serving /metrics (Prometheus), /healthz and /readyz; empty disables (the chart uses the pod IP)")
	cdiMode := fs.String("cdi", "off", "how Allocate hands devices to containers: off (bind mounts and device nodes, any runtime) or on (CDI device names <prefix>/ac=ID and <prefix>/ac-monitor=ID, with their CDI specs kept in --cdi-spec-dir; needs containerd 1.7+ with CDI enabled, or CRI-O)")
	fs.StringVar(&cfg.CDISpecDir, "cdi-spec-dir", "", "directory of the CDI specs (default with --cdi=on or --api=dra: "+plugin.DefaultCDISpecDir+"); with --cdi=off, specs of ours left there are removed at start")
	uninstallDS := fs.String("uninstall-daemonset", "", "NAMESPACE/NAME of this plugin's DaemonSet: when the plugin stops and that DaemonSet is gone or being deleted (helm uninstall), it removes its CDI specs, which otherwise stay (kubelet restarts containers of running pods with the CDI names it saved); needs get on it")
	labelNode := fs.Bool("label-node", false, "keep PREFIX/ac.{present,count,model,simulated} labels on this node's Node object (needs get and patch on nodes)")
	nodeName := fs.String("node-name", os.Getenv("NODE_NAME"), "this node's name, for --label-node and --api=dra (default: $NODE_NAME, from the downward API)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for --label-node, --uninstall-daemonset and --api=dra when not running in a pod (default: in-cluster config)")
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
	switch *cdiMode {
	case "on":
		cfg.CDI = true
		if cfg.CDISpecDir == "" {
			cfg.CDISpecDir = plugin.DefaultCDISpecDir
		}
	case "off":
	default:
		return fmt.Errorf("--cdi must be off or on, got %q", *cdiMode)
	}
	switch *api {
	case "device-plugin":
	case "dra":
		if cfg.CDI {
			return errors.New("--cdi=on is for --api=device-plugin: the DRA driver always hands devices out through CDI")
		}
		if *nodeName == "" {
			return errors.New("--api=dra needs this node's name: --node-name or $NODE_NAME (the chart sets it from the downward API)")
		}
	default:
		return fmt.Errorf("--api must be device-plugin or dra, got %q", *api)
	}
	draSpecDir := cmp.Or(cfg.CDISpecDir, plugin.DefaultCDISpecDir)
	if *api == "dra" {
		// The device-plugin API's specs are not this driver's: with CDI
		// off it would remove them in --cdi-spec-dir, which the DRA driver
		// writes in.
		cfg.CDISpecDir = ""
	}
	var client kubernetes.Interface
	var driver *dra.Driver
	if *api == "dra" {
		if client, err = kubeClient(*kubeconfig); err != nil {
			return err
		}
		driver, err = dra.New(dra.Config{
			DriverName: cfg.ResourcePrefix, NodeName: *nodeName, Client: client,
			PluginDataDir: *draPluginDir, RegistrarDir: *draRegistrarDir, CDISpecDir: draSpecDir,
			MonitorClients: cfg.MonitorSlots, RollingUpdateUID: types.UID(*podUID), Logger: log,
		})
		if err != nil {
			return err
		}
		cfg.Frontend = driver
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var ds uninstall.Ref
	if *uninstallDS != "" {
		if ds, err = uninstall.ParseRef(*uninstallDS); err != nil {
			return fmt.Errorf("--uninstall-daemonset: %w", err)
		}
	}
	if *labelNode && *nodeName == "" {
		return nodelabel.ErrNoNodeName
	}
	if client == nil && (*labelNode || *uninstallDS != "") {
		if client, err = kubeClient(*kubeconfig); err != nil {
			return err
		}
	}
	var check *uninstall.Check
	if *uninstallDS != "" {
		check = uninstall.NewCheck(client, ds)
		if err := check.Start(ctx); err != nil {
			log.Warn("CDI specs will be kept when the plugin stops, uninstall or not", "err", err)
		}
	}
	var labeler *nodelabel.Labeler
	if *labelNode {
		labeler = &nodelabel.Labeler{Client: client, Node: *nodeName, Prefix: cfg.ResourcePrefix, Logger: log}
		if err := labeler.Check(ctx); errors.Is(err, nodelabel.ErrMisconfigured) {
			return err
		} else if err != nil {
			log.Warn("cannot reach the API server yet; node labels will follow", "err", err)
		}
	}
	p, err := plugin.New(cfg)
	if err != nil {
		return err
	}
	if driver != nil {
		log.Info("DRA driver starting", "driver", cfg.ResourcePrefix, "node", *nodeName, "dev_dir", cfg.DevDir, "metrics", cfg.MetricsAddr,
			"daemon_timeout", cfg.DaemonTimeout, "cdi_spec_dir", draSpecDir)
	} else {
		names := make([]string, len(p.Resources))
		for i, r := range p.Resources {
			names[i] = r.Name
		}
		log.Info("device plugin starting", "dev_dir", cfg.DevDir, "kubelet_dir", cfg.KubeletDir, "resources", names, "metrics", cfg.MetricsAddr,
			"daemon_timeout", cfg.DaemonTimeout, "cdi", *cdiMode, "cdi_spec_dir", cfg.CDISpecDir)
	}

	var wg sync.WaitGroup
	var labelErr error
	if labeler != nil {
		labeler.Store = p.Store
		wg.Go(func() { labelErr = labeler.Run(ctx) })
	}
	err = p.Run(ctx)
	stop() // the plugin ended (signal or failure): end the labeler too
	wg.Wait()
	if check != nil {
		removeOnUninstall(check, ds, p, driver, log)
	}
	log.Info("device plugin stopped; sockets removed")
	return errors.Join(err, labelErr)
}

// removeOnUninstall removes the CDI specs (and, for the DRA driver, this
// node's ResourceSlices and its checkpoint) if the plugin's DaemonSet is
// gone or being deleted; when that cannot be known it keeps them.
func removeOnUninstall(check *uninstall.Check, ds uninstall.Ref, p *plugin.Plugin, driver *dra.Driver, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	gone, err := check.Uninstalling(ctx)
	if errors.Is(err, uninstall.ErrTokenRefused) && driver == nil {
		// The device plugin's CDI specs are written again at every start:
		// removing them on a forced restart costs nothing.
		gone, err = true, nil
	}
	switch {
	case err != nil:
		log.Warn("cannot tell an uninstall from a restart; CDI specs kept", "daemonset", ds.String(), "err", err)
	case gone && driver != nil:
		log.Info("DaemonSet gone or being deleted: uninstall, removing the ResourceSlices, CDI specs and checkpoint", "daemonset", ds.String())
		if err := driver.Uninstall(ctx); err != nil {
			log.Warn("uninstall incomplete", "err", err)
		}
	case gone:
		log.Info("DaemonSet gone or being deleted: uninstall, removing the CDI specs", "daemonset", ds.String())
		p.RemoveCDISpecs()
	default:
		log.Info("DaemonSet still there (restart or update): CDI specs kept", "daemonset", ds.String())
	}
}

// kubeClient builds a Kubernetes client from a kubeconfig file, or from the
// pod's service account when path is empty.
func kubeClient(path string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if path != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", path)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("build the Kubernetes client config: %w (outside a pod, pass --kubeconfig)", err)
	}
	rc.UserAgent = "accel-plugin"
	return kubernetes.NewForConfig(rc)
}

func runUnlabelNodes(args []string, stderr io.Writer) error {
	fs := newFlagSet("unlabel-nodes", "unlabel-nodes [--resource-prefix accel.io] [--labels=true] [--resource-slices=false] [--kubeconfig FILE]", stderr)
	prefix := fs.String("resource-prefix", "accel.io", "remove PREFIX/ac.present, .count, .model and .simulated")
	labels := fs.Bool("labels", true, "remove the node labels")
	slices := fs.Bool("resource-slices", false, "also delete every ResourceSlice of the DRA driver PREFIX, on all nodes (after an uninstall of --api=dra)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (default: in-cluster config)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := plugin.ValidateResourcePrefix(*prefix); err != nil {
		return err
	}
	if !*labels && !*slices {
		return errors.New("nothing to do with --labels=false and --resource-slices=false")
	}
	client, err := kubeClient(*kubeconfig)
	if err != nil {
		return err
	}
	log, _ := newLogger(stderr, "info")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	if *labels {
		n, err := nodelabel.RemoveAll(ctx, client, *prefix, log)
		errs = append(errs, err)
		log.Info("node labels done", "nodes_changed", n)
	}
	if *slices {
		n, err := dra.RemoveAllSlices(ctx, client, *prefix)
		errs = append(errs, err)
		log.Info("ResourceSlices done", "driver", *prefix, "deleted", n)
	}
	return errors.Join(errs...)
}
