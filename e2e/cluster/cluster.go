package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"
)

// Cluster is a running local cluster.
type Cluster struct {
	Options
	// Kubeconfig is the admin (system:masters) kubeconfig.
	Kubeconfig string
	// NodeName is the only node: the host name, lower case.
	NodeName string
}

// NodeName is the name kubelet registers the node under.
func NodeName() (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", err
	}
	return strings.ToLower(strings.TrimSpace(h)), nil
}

// LogFile is the log of a component: etcd, containerd, kube-apiserver,
// kube-controller-manager, kube-scheduler or kubelet.
func (o Options) LogFile(component string) string { return paths{o: o.Defaults()}.logFile(component) }

// ContainerdSocket is the CRI endpoint of the cluster's containerd.
func (o Options) ContainerdSocket() string { return paths{o: o.Defaults()}.containerdSock() }

// Down tears the cluster down.
func (c *Cluster) Down(ctx context.Context) error { return Down(ctx, c.Options) }

// RestartKubelet restarts kubelet and waits until the node is Ready again.
func (c *Cluster) RestartKubelet(ctx context.Context) error { return RestartKubelet(ctx, c.Options) }

// lock serialises Up, Down and RestartKubelet between processes (e.g. test
// binaries of several packages run in parallel by `go test ./...`).
func (o Options) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Clean(o.RunDir)+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// begin is how Up, Down and RestartKubelet start: defaults filled in, root
// checked, and the lock held (call unlock when done); they run one at a time.
func (o Options) begin() (Options, func(), error) {
	o = o.Defaults()
	if err := requireRoot(); err != nil {
		return o, nil, err
	}
	unlock, err := o.lock()
	if err != nil {
		return o, nil, err
	}
	return o, unlock, nil
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root (it runs kubelet, containerd and changes iptables): run as root")
	}
	return nil
}

// healthy reports whether every component runs and the node is Ready.
func (p paths) healthy(ctx context.Context, node string) bool {
	for _, c := range components {
		if _, ok := p.running(c); !ok {
			return false
		}
	}
	cs, err := p.o.clientset()
	if err != nil {
		return false
	}
	return p.waitNodeReady(ctx, cs, node, time.Time{}, 2*time.Second) == nil
}

// anyState reports whether anything of a previous cluster is left.
func (p paths) anyState() bool {
	for _, c := range components {
		if _, err := os.Stat(p.pidFile(c)); err == nil {
			return true
		}
	}
	for _, d := range []string{p.o.StateDir, p.o.RunDir} {
		if _, err := os.Stat(d); err == nil {
			return true
		}
	}
	return false
}

// Up brings the cluster up (or, if it is up and healthy, only imports
// Options.Imports) and waits until the node is Ready and pods can be created.
func Up(ctx context.Context, o Options) (*Cluster, error) {
	o, unlock, err := o.begin()
	if err != nil {
		return nil, err
	}
	defer unlock()
	p := paths{o: o, kids: &children{}}
	node, err := NodeName()
	if err != nil {
		return nil, err
	}
	for _, a := range o.Imports {
		if st, err := os.Stat(a); err != nil || !st.Mode().IsRegular() {
			return nil, fmt.Errorf("image archive %s: not a readable file (build it first, e.g. `make image`)", a)
		}
	}
	c := &Cluster{Options: o, Kubeconfig: p.kubeconfig(certAdmin), NodeName: node}
	t0 := time.Now()
	last := t0
	phase := func(name string) {
		now := time.Now()
		o.logf("%-28s %6.1fs", name, now.Sub(last).Seconds())
		last = now
	}

	if foreign := p.foreignKube(); len(foreign) > 0 {
		return nil, fmt.Errorf("this machine already runs Kubernetes components that localcluster did not start: %s; refusing to take it over (use that cluster with KUBECONFIG instead)", strings.Join(foreign, ", "))
	}
	if p.healthy(ctx, node) {
		if err := p.importImages(ctx, o.Imports); err != nil {
			return nil, err
		}
		o.logf("already up (node %s Ready); kubeconfig %s", node, c.Kubeconfig)
		return c, nil
	}
	if p.anyState() {
		o.logf("a previous cluster is partly up or left state: tearing it down first")
		if err := down(ctx, o); err != nil {
			return nil, fmt.Errorf("cleaning up the previous cluster: %w", err)
		}
		last = time.Now()
	}

	// A failed Up leaves nothing running and nothing changed: it stops what
	// it started, then undoes the rest as Down does.
	fail := func(err error) (*Cluster, error) {
		o.logf("up failed: %v; tearing down what it started (logs in %s)", err, o.LogDir)
		if derr := p.abort(ctx); derr != nil {
			o.logf("tearing down after the failed up: %v", derr)
			return nil, errors.Join(err, fmt.Errorf("tearing down after the failed up (run `localcluster down`): %w", derr))
		}
		return nil, err
	}
	if !o.SkipPackages {
		if err := o.installPackages(ctx); err != nil {
			return fail(err)
		}
		phase("packages")
	}
	if _, err := p.ensureBinaries(ctx); err != nil {
		return fail(err)
	}
	phase("kubernetes binaries")
	baseImages, err := p.baseImages(ctx)
	if err != nil {
		return fail(err)
	}
	phase("base images")

	if err := p.prepare(node); err != nil {
		return fail(err)
	}
	phase("pki and configs")

	for _, comp := range []string{compEtcd, compContainerd} {
		if _, err := p.start(comp); err != nil {
			return fail(err)
		}
	}
	if err := p.waitEtcd(ctx); err != nil {
		return fail(err)
	}
	// The controller-manager and scheduler wait for the API server
	// themselves: starting them now overlaps their start-up with its.
	for _, comp := range []string{compAPIServer, compCtrlMgr, compScheduler} {
		if _, err := p.start(comp); err != nil {
			return fail(err)
		}
	}
	if err := p.waitContainerd(ctx); err != nil {
		return fail(err)
	}
	if err := p.importImages(ctx, append(baseImages, o.Imports...)); err != nil {
		return fail(err)
	}
	phase("etcd, containerd, images")
	cs, err := o.clientset()
	if err != nil {
		return fail(err)
	}
	if err := p.waitAPIServer(ctx, cs); err != nil {
		return fail(err)
	}
	phase("kube-apiserver ready")
	if err := addRules(ctx, primaryIPv4(hostIPs())); err != nil {
		return fail(err)
	}
	if err := ensureCgroupRoot(); err != nil {
		return fail(err)
	}
	if _, err := p.start(compKubelet); err != nil {
		return fail(err)
	}
	if err := p.waitNodeReady(ctx, cs, node, time.Time{}, 120*time.Second); err != nil {
		return fail(err)
	}
	phase("node Ready")
	if err := p.waitNamespacesReady(ctx, cs); err != nil {
		return fail(err)
	}
	phase("service accounts, root CA")
	o.logf("up in %.1fs; node %s; kubeconfig %s", time.Since(t0).Seconds(), node, c.Kubeconfig)
	return c, nil
}

// abort stops the components this Up started (through their own process
// handles, whatever their PID files say), then tears down everything else
// as Down does. It runs to the end even when ctx was cancelled (Ctrl-C).
func (p paths) abort(ctx context.Context) error {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	err := p.kids.stopAll(15 * time.Second)
	return errors.Join(err, down(tctx, p.o))
}

// prepare writes the PKI, kubeconfigs and configs, records the sysctls,
// makes the shared mount points, and rotates the logs.
func (p paths) prepare(node string) error {
	o := p.o
	for _, d := range []string{o.StateDir, o.RunDir, o.LogDir, p.config(""), p.cniConfDir(), p.cniDataDir(), p.containerdRoot(), p.containerdState()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := recordSysctls(p.sysctlFile()); err != nil {
		return err
	}
	for _, c := range components {
		if _, err := os.Stat(p.logFile(c)); err == nil {
			os.Rename(p.logFile(c), p.logFile(c)+".1")
		}
	}
	pki, err := GeneratePKI(node, hostIPs())
	if err != nil {
		return fmt.Errorf("generate the PKI: %w", err)
	}
	if err := pki.Write(p.pki("")); err != nil {
		return err
	}
	if err := p.writeKubeconfigs(pki); err != nil {
		return err
	}
	kubelet, err := yaml.Marshal(kubeletConfig(p))
	if err != nil {
		return fmt.Errorf("kubelet config: %w", err)
	}
	files := map[string][]byte{
		p.config("containerd.toml"):                        []byte(renderContainerdConfig(p)),
		p.config("kubelet.yaml"):                           kubelet,
		filepath.Join(p.cniConfDir(), "10-accel.conflist"): []byte(renderCNIConfig(p)),
	}
	for f, data := range files {
		if err := os.WriteFile(f, data, 0o644); err != nil {
			return err
		}
	}
	return p.makeSharedMounts()
}

// SharedMounts are host directories made shared mount points, so pods can
// mount them with Bidirectional/HostToContainer propagation (the root mount
// of these machines is private): the parent of the simulator's device
// directory, the host path the chart mounts.
var SharedMounts = []string{filepath.Dir(fuseDevDir)}

func (p paths) makeSharedMounts() error {
	var made []string // "bind DIR" / "mkdir DIR" lines for Down
	for _, m := range SharedMounts {
		if _, err := os.Stat(m); os.IsNotExist(err) {
			if err := os.MkdirAll(m, 0o755); err != nil {
				return err
			}
			made = append(made, "mkdir "+m)
		}
		if mps := mountPoints(m); len(mps) == 0 || mps[len(mps)-1] != m {
			if err := syscall.Mount(m, m, "", syscall.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind mount %s: %w", m, err)
			}
			made = append(made, "bind "+m)
		}
		if err := syscall.Mount("", m, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("make %s shared: %w", m, err)
		}
	}
	return os.WriteFile(filepath.Join(p.o.RunDir, sharedMarker), []byte(strings.Join(made, "\n")+"\n"), 0o644)
}

// RestartKubelet stops kubelet (SIGTERM, then SIGKILL after 15 s), starts it
// with the same configuration, and waits until it has reported the node
// Ready again.
func RestartKubelet(ctx context.Context, o Options) error {
	o, unlock, err := o.begin()
	if err != nil {
		return err
	}
	defer unlock()
	p := paths{o: o, kids: &children{}}
	node, err := NodeName()
	if err != nil {
		return err
	}
	if _, ok := p.running(compAPIServer); !ok {
		return errors.New("the cluster is not up: run `localcluster up` first")
	}
	t0 := time.Now()
	if err := p.stop(compKubelet, 15*time.Second); err != nil {
		return err
	}
	stopped := time.Now()
	if _, err := p.start(compKubelet); err != nil {
		return err
	}
	cs, err := o.clientset()
	if err != nil {
		return err
	}
	if err := p.waitNodeReady(ctx, cs, node, stopped, 120*time.Second); err != nil {
		return err
	}
	o.logf("kubelet restarted; node %s Ready in %.1fs", node, time.Since(t0).Seconds())
	return nil
}

// ComponentStatus is one line of Status.
type ComponentStatus struct {
	Name    string
	PID     int
	Running bool
	Log     string
}

// Status reports which components run, and whether the node is Ready; ok
// means everything runs and the node is Ready.
func Status(ctx context.Context, o Options) (comps []ComponentStatus, summary string, ok bool) {
	o = o.Defaults()
	p := paths{o: o}
	var out []ComponentStatus
	for _, c := range components {
		pid, ok := p.running(c)
		out = append(out, ComponentStatus{Name: c, PID: pid, Running: ok, Log: p.logFile(c)})
	}
	node, _ := NodeName()
	if _, ok := p.running(compAPIServer); !ok {
		return out, "node " + node + ": unknown (kube-apiserver is not running)", false
	}
	cs, err := o.clientset()
	if err != nil {
		return out, "node " + node + ": unknown (" + err.Error() + ")", false
	}
	if err := p.waitNodeReady(ctx, cs, node, time.Time{}, 3*time.Second); err != nil {
		return out, "node " + node + ": not Ready (" + err.Error() + ")", false
	}
	for _, c := range out {
		if !c.Running {
			return out, "node " + node + ": Ready, but " + c.Name + " is not running", false
		}
	}
	return out, "node " + node + ": Ready", true
}
