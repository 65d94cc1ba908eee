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
)

// Cluster is the local cluster: where it keeps its state (Options, the
// defaults filled in), and Up, Down, RestartKubelet and Status on it. Make
// one with New. Its operations run one at a time, in this process and
// between processes (a lock file next to RunDir).
type Cluster struct {
	o Options
	// kids are the components this Cluster started: whether they still
	// run is what their watchers saw.
	kids *children
	// commands replaces components' command lines (executable first): the
	// tests' stand-ins; nil otherwise.
	commands map[string][]string
}

// New returns the cluster o describes, every empty field of o filled in
// with its default. It changes nothing on the machine.
func New(o Options) *Cluster {
	return &Cluster{o: o.withDefaults(), kids: &children{}}
}

// Options are the cluster's options, the defaults filled in.
func (c *Cluster) Options() Options { return c.o }

func (c *Cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.o.Log, "localcluster: "+format+"\n", args...)
}

// lock serialises Up, Down and RestartKubelet between processes (e.g. test
// binaries of several packages run in parallel by `go test ./...`).
func (c *Cluster) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Clean(c.o.RunDir)+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// begin is how Up, Down and RestartKubelet start: root checked, and the
// lock held (call unlock when done); they run one at a time.
func (c *Cluster) begin() (unlock func(), err error) {
	if err := requireRoot(); err != nil {
		return nil, err
	}
	return c.lock()
}

// beginOnNode is begin for the operations that wait for the node (Up,
// RestartKubelet): it also returns the node's name.
func (c *Cluster) beginOnNode() (node string, unlock func(), err error) {
	if unlock, err = c.begin(); err != nil {
		return "", nil, err
	}
	if node, err = nodeName(); err != nil {
		unlock()
		return "", nil, err
	}
	return node, unlock, nil
}

// Up brings the cluster up (or, if it is up and healthy, only imports
// Options.Imports) and waits until the node is Ready and pods can be
// created. A failed Up leaves nothing running and nothing changed: it
// stops what it started, then undoes the rest as Down does.
func (c *Cluster) Up(ctx context.Context) error {
	node, unlock, err := c.beginOnNode()
	if err != nil {
		return err
	}
	defer unlock()
	for _, a := range c.o.Imports {
		if st, err := os.Stat(a); err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("image archive %s: not a readable file (build it first, e.g. `make image`)", a)
		}
	}
	t0 := time.Now()
	last := t0
	phase := func(name string) {
		now := time.Now()
		c.logf("%-28s %6.1fs", name, now.Sub(last).Seconds())
		last = now
	}

	if foreign := c.foreignKube(); len(foreign) > 0 {
		return fmt.Errorf("this machine already runs Kubernetes components that localcluster did not start: %s; refusing to take it over (use that cluster with KUBECONFIG instead)", strings.Join(foreign, ", "))
	}
	if c.healthy(ctx, node) {
		if err := c.importImages(ctx, c.o.Imports); err != nil {
			return err
		}
		c.logf("already up (node %s Ready); kubeconfig %s", node, c.AdminKubeconfig())
		return nil
	}
	if c.anyState() {
		c.logf("a previous cluster is partly up or left state: tearing it down first")
		if err := c.down(ctx); err != nil {
			return fmt.Errorf("cleaning up the previous cluster: %w", err)
		}
		last = time.Now()
	}

	fail := func(err error) error {
		c.logf("up failed: %v; tearing down what it started (logs in %s)", err, c.o.LogDir)
		if derr := c.abort(ctx); derr != nil {
			c.logf("tearing down after the failed up: %v", derr)
			return errors.Join(err, fmt.Errorf("tearing down after the failed up (run `localcluster down`): %w", derr))
		}
		return err
	}
	if !c.o.SkipPackages {
		if err := c.installPackages(ctx); err != nil {
			return fail(err)
		}
		phase("packages")
	}
	if _, err := c.ensureBinaries(ctx); err != nil {
		return fail(err)
	}
	phase("kubernetes binaries")
	if _, err := c.ensureContainerd(ctx); err != nil {
		return fail(err)
	}
	phase("containerd binaries")
	baseImages, err := c.baseImages(ctx)
	if err != nil {
		return fail(err)
	}
	phase("base images")

	if err := c.makeDirs(); err != nil {
		return fail(err)
	}
	if err := recordSysctls(c.sysctlFile()); err != nil {
		return fail(err)
	}
	c.rotateLogs()
	pki, err := c.writePKI(node)
	if err != nil {
		return fail(err)
	}
	if err := c.writeKubeconfigs(pki); err != nil {
		return fail(err)
	}
	if err := c.writeConfigs(); err != nil {
		return fail(err)
	}
	if err := c.makeSharedMounts(); err != nil {
		return fail(err)
	}
	phase("pki and configs")

	for _, comp := range []string{compEtcd, compContainerd} {
		if _, err := c.start(comp); err != nil {
			return fail(err)
		}
	}
	if err := c.waitEtcd(ctx); err != nil {
		return fail(err)
	}
	// The controller-manager and scheduler wait for the API server
	// themselves: starting them now overlaps their start-up with its.
	for _, comp := range []string{compAPIServer, compCtrlMgr, compScheduler} {
		if _, err := c.start(comp); err != nil {
			return fail(err)
		}
	}
	if err := c.waitContainerd(ctx); err != nil {
		return fail(err)
	}
	if err := c.importImages(ctx, append(baseImages, c.o.Imports...)); err != nil {
		return fail(err)
	}
	phase("etcd, containerd, images")
	cs, err := c.clientset()
	if err != nil {
		return fail(err)
	}
	if err := c.waitAPIServer(ctx, cs); err != nil {
		return fail(err)
	}
	phase("kube-apiserver ready")
	if err := addRules(ctx, primaryIPv4(hostIPs())); err != nil {
		return fail(err)
	}
	if err := ensureCgroupRoot(); err != nil {
		return fail(err)
	}
	if _, err := c.start(compKubelet); err != nil {
		return fail(err)
	}
	if err := c.waitNodeReady(ctx, cs, node, time.Time{}, 120*time.Second); err != nil {
		return fail(err)
	}
	phase("node Ready")
	if err := c.waitNamespacesReady(ctx, cs); err != nil {
		return fail(err)
	}
	phase("service accounts, root CA")
	c.logf("up in %.1fs; node %s; kubeconfig %s", time.Since(t0).Seconds(), node, c.AdminKubeconfig())
	return nil
}

// abort stops the components this Cluster started (through their own
// process handles, whatever their PID files say), then tears down
// everything else as Down does. It runs to the end even when ctx was
// cancelled (Ctrl-C).
func (c *Cluster) abort(ctx context.Context) error {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	err := c.kids.stopAll(15 * time.Second)
	return errors.Join(err, c.down(tctx))
}

// Down stops and removes everything Up started and changed. It is
// idempotent and keeps going after errors; it returns them joined.
func (c *Cluster) Down(ctx context.Context) error {
	unlock, err := c.begin()
	if err != nil {
		return err
	}
	defer unlock()
	if foreign := c.foreignKube(); len(foreign) > 0 {
		return fmt.Errorf("refusing to tear down: this machine runs Kubernetes components that localcluster did not start (%s); stop them first", strings.Join(foreign, ", "))
	}
	if !c.anyState() {
		c.logf("no local cluster state in %s or %s: nothing to tear down", c.o.StateDir, c.o.RunDir)
		return nil
	}
	return c.down(ctx)
}

// down is Down's sequence, also run by Up before it starts (over a
// previous cluster's remains) and after it failed.
func (c *Cluster) down(ctx context.Context) error {
	start := time.Now()
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// kubelet first, so it restarts nothing.
	add(c.stop(compKubelet, 15*time.Second))
	add(c.stopStrays(compKubelet))
	netns, containers := c.removePods(ctx)
	add(c.stopComponents())
	add(c.stopPodProcesses())
	add(c.unmountAll(ctx, netns))
	add(removeKubepodsCgroups())
	add(deleteBridge(ctx))
	errs = append(errs, removeRules(ctx)...)
	errs = append(errs, restoreSysctls(c.sysctlFile())...)
	add(c.removeFiles(containers))
	c.logf("down in %s", time.Since(start).Round(100*time.Millisecond))
	return errors.Join(errs...)
}
