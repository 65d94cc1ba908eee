package plugin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfs"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/fakedev"
)

// simHelperEnv makes the test binary run a device daemon (registry,
// simulated devices, FUSE nodes) as a separate process, as in production,
// so that killing it gives the plugin real ENOTCONN errors.
const simHelperEnv = "PLUGIN_TEST_SIM"

func TestMain(m *testing.M) {
	if spec := os.Getenv(simHelperEnv); spec != "" {
		os.Exit(runSimHelper(spec))
	}
	os.Exit(m.Run())
}

// runSimHelper serves "DIR DEVICES NUMA" until SIGTERM; it prints "ready"
// once the nodes are mounted.
func runSimHelper(spec string) int {
	var dir string
	var devices, numa int
	if _, err := fmt.Sscan(spec, &dir, &devices, &numa); err != nil {
		fmt.Fprintln(os.Stderr, "bad helper spec:", spec, err)
		return 2
	}
	reg := accel.NewRegistry(accel.Options{})
	sim := fakedev.New(reg, fakedev.Config{ResetDuration: 5 * time.Millisecond, NUMANodes: numa})
	for range devices {
		if _, err := sim.Add(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	srv, err := devfs.Mount(dir, reg, devfs.Options{Control: sim})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	reg.Close()
	if err := srv.Unmount(2 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// requireFUSE skips the test unless it can mount a FUSE simulator (root
// for allow_other, and /dev/fuse). why says what only the kernel can show
// here; the skip message carries it, so a non-root run says what it left
// untested.
func requireFUSE(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root: mounts a FUSE simulator (allow_other) to show %s; run as root to include it", why)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse (modprobe fuse): mounts a FUSE simulator to show %s", why)
	}
}

// simProc is a device daemon in its own process.
type simProc struct {
	dir string
	cmd *exec.Cmd
}

// startSim starts a device daemon serving devices on dir.
func startSim(t testing.TB, dir string, devices, numa int) *simProc {
	t.Helper()
	requireFUSE(t, "a device daemon in its own process")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", simHelperEnv, dir, devices, numa), "GORACE=atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &simProc{dir: dir, cmd: cmd}
	t.Cleanup(s.stop)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("device daemon did not start: %q, %v", line, err)
	}
	return s
}

// kill kills the daemon without letting it unmount: its nodes then fail
// with ENOTCONN, as when a real daemon crashes.
func (s *simProc) kill(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = s.cmd.Wait()
}

func (s *simProc) stop() {
	if s.cmd.ProcessState == nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		_ = s.cmd.Wait()
	}
	// A killed daemon leaves a dead mount behind.
	_ = unix.Unmount(s.dir, unix.MNT_DETACH)
}

// freeze stops the daemon (SIGSTOP): every access to its mount then waits
// in the kernel until thaw. The test's cleanup thaws it first, so nothing
// is left blocked on the mount.
func (s *simProc) freeze(t testing.TB) {
	t.Helper()
	t.Cleanup(func() { _ = s.cmd.Process.Signal(syscall.SIGCONT) })
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
}

// thaw resumes a frozen daemon (SIGCONT).
func (s *simProc) thaw(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}

// ctl sends a control command to the daemon.
func (s *simProc) ctl(t testing.TB, cmd string) string {
	t.Helper()
	out, err := devfsclient.Control(s.dir, cmd)
	if err != nil {
		t.Fatalf("sim ctl %s: %v", cmd, err)
	}
	return out
}

// fakeKubelet is a stand-in for kubelet's device manager: it serves the
// Registration service on kubelet.sock and, on every Register, connects
// back to the plugin and follows its ListAndWatch stream, as kubelet does.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	t   testing.TB
	dir string

	mu        sync.Mutex
	srv       *grpc.Server
	conns     []*grpc.ClientConn
	clients   map[string]pluginapi.DevicePluginClient // by resource
	lists     map[string]list                         // latest list by resource
	registers map[string]int
	rejects   int // Register calls refused so far
	rejectN   int // refuse this many Register calls (kubelet not ready)
	changed   chan struct{}
	ctx       context.Context // one kubelet life; ends on stop
	cancel    context.CancelFunc
}

// list is one ListAndWatch response and when it arrived.
type list struct {
	devices []*pluginapi.Device
	at      time.Time
	n       int // responses received on this resource so far
}

func (l list) healthy() int {
	n := 0
	for _, d := range l.devices {
		if d.Health == pluginapi.Healthy {
			n++
		}
	}
	return n
}

func newFakeKubelet(t testing.TB, dir string) *fakeKubelet {
	k := &fakeKubelet{t: t, dir: dir, clients: map[string]pluginapi.DevicePluginClient{},
		lists: map[string]list{}, registers: map[string]int{}, changed: make(chan struct{})}
	k.start()
	t.Cleanup(k.stop)
	return k
}

// start creates kubelet.sock and serves Registration on it.
func (k *fakeKubelet) start() {
	k.t.Helper()
	l, err := net.Listen("unix", filepath.Join(k.dir, KubeletSocketName))
	if err != nil {
		k.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := grpc.NewServer()
	pluginapi.RegisterRegistrationServer(srv, k)
	k.mu.Lock()
	k.srv, k.ctx, k.cancel = srv, ctx, cancel
	k.mu.Unlock()
	go func() { _ = srv.Serve(l) }()
}

// stop stops serving and drops every plugin connection.
func (k *fakeKubelet) stop() {
	k.mu.Lock()
	srv, cancel, conns := k.srv, k.cancel, k.conns
	k.srv, k.conns = nil, nil
	k.mu.Unlock()
	if srv == nil {
		return
	}
	cancel()
	srv.Stop()
	for _, c := range conns {
		c.Close()
	}
	os.Remove(filepath.Join(k.dir, KubeletSocketName))
}

// restart behaves like a kubelet restart: stop, delete every socket in the
// directory (kubelet's CleanupPluginDirectory), then serve a new kubelet.sock.
func (k *fakeKubelet) restart() {
	k.stop()
	entries, _ := os.ReadDir(k.dir)
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			os.Remove(filepath.Join(k.dir, e.Name()))
		}
	}
	k.mu.Lock()
	k.lists = map[string]list{}
	k.mu.Unlock()
	k.start()
}

// Register connects back to the plugin like kubelet's device manager.
func (k *fakeKubelet) Register(ctx context.Context, req *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	if req.Version != pluginapi.Version {
		return nil, fmt.Errorf("unsupported version %q", req.Version)
	}
	k.mu.Lock()
	if k.rejects < k.rejectN {
		k.rejects++
		n, of := k.rejects, k.rejectN
		k.mu.Unlock()
		k.notify()
		return nil, fmt.Errorf("not ready (refusal %d of %d)", n, of)
	}
	k.mu.Unlock()
	conn, err := grpc.NewClient("unix://"+filepath.Join(k.dir, req.Endpoint),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	client := pluginapi.NewDevicePluginClient(conn)
	opts, err := client.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("get options: %w", err)
	}
	if !opts.GetPreferredAllocationAvailable {
		conn.Close()
		return nil, fmt.Errorf("%s does not offer GetPreferredAllocation", req.ResourceName)
	}
	k.mu.Lock()
	sctx := k.ctx
	k.conns = append(k.conns, conn)
	k.clients[req.ResourceName] = client
	k.registers[req.ResourceName]++
	k.mu.Unlock()
	stream, err := client.ListAndWatch(sctx, &pluginapi.Empty{})
	if err != nil {
		return nil, fmt.Errorf("ListAndWatch: %w", err)
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			k.mu.Lock()
			n := k.lists[req.ResourceName].n + 1
			k.lists[req.ResourceName] = list{devices: resp.Devices, at: time.Now(), n: n}
			close(k.changed)
			k.changed = make(chan struct{})
			k.mu.Unlock()
		}
	}()
	k.notify()
	return &pluginapi.Empty{}, nil
}

func (k *fakeKubelet) notify() {
	k.mu.Lock()
	close(k.changed)
	k.changed = make(chan struct{})
	k.mu.Unlock()
}

// client returns the plugin client of a registered resource.
func (k *fakeKubelet) client(resource string) pluginapi.DevicePluginClient {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.clients[resource]
}

// await waits up to d for cond over the stand-in's state; it returns the
// time cond first held.
func (k *fakeKubelet) await(d time.Duration, what string, cond func(lists map[string]list, registers map[string]int) bool) time.Time {
	k.t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		k.mu.Lock()
		ok := cond(k.lists, k.registers)
		ch := k.changed
		k.mu.Unlock()
		if ok {
			return time.Now()
		}
		select {
		case <-ch:
		case <-deadline.C:
			k.mu.Lock()
			state := fmt.Sprintf("registers=%v", k.registers)
			for r, l := range k.lists {
				state += fmt.Sprintf(" %s: %d devices, %d healthy, %d lists;", r, len(l.devices), l.healthy(), l.n)
			}
			k.mu.Unlock()
			k.t.Fatalf("%s: not within %s (%s)", what, d, state)
		}
	}
}

// awaitList waits until resource's latest list has total devices of which
// healthy are healthy, and returns that list.
func (k *fakeKubelet) awaitList(d time.Duration, resource string, total, healthy int) list {
	k.t.Helper()
	var got list
	k.await(d, fmt.Sprintf("%s lists %d devices, %d healthy", resource, total, healthy), func(lists map[string]list, _ map[string]int) bool {
		got = lists[resource]
		return len(got.devices) == total && got.healthy() == healthy
	})
	return got
}

// harness is a device daemon, a stand-in kubelet and the plugin under
// test. The daemon is either in memory (mem, startHarness) or a FUSE
// simulator in its own process (sim, startFUSEHarness).
type harness struct {
	mem     *memDaemon
	sim     *simProc
	kubelet *fakeKubelet
	plugin  *Plugin
	cancel  context.CancelFunc
	done    chan error
}

const (
	computeRes = "accel.io/ac"
	monitorRes = "accel.io/ac-monitor"
)

// startHarness runs the plugin over an in-memory daemon (see
// startMemHarness): what the plugin does with what it discovers needs
// neither root nor FUSE.
func startHarness(t testing.TB, devices, numa, slots int) *harness {
	t.Helper()
	return startMemHarness(t, devices, numa, slots, nil)
}

// startHarnessWith is startHarness with the plugin's config adjusted.
func startHarnessWith(t testing.TB, devices, numa, slots int, adjust func(*Config)) *harness {
	t.Helper()
	return startMemHarness(t, devices, numa, slots, adjust)
}

// startFUSEHarness runs the plugin over a FUSE simulator in its own
// process, for what only the kernel can show (why, in the skip message).
func startFUSEHarness(t testing.TB, why string, devices, numa, slots int, adjust func(*Config)) *harness {
	t.Helper()
	requireFUSE(t, why)
	root := t.TempDir()
	kdir := filepath.Join(root, "device-plugins")
	if err := os.Mkdir(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	h := &harness{sim: startSim(t, filepath.Join(root, "dev"), devices, numa)}
	h.kubelet = newFakeKubelet(t, kdir)
	cfg := Config{
		DevDir: h.sim.dir, HostDevDir: "/host/run/accel/dev", KubeletDir: kdir,
		ResourcePrefix: "accel.io", MonitorSlots: slots, Resync: 30 * time.Second,
		DaemonTimeout: DefaultDaemonTimeout, Logger: testLogger(t),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.plugin = p
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- p.Run(ctx) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop stops the plugin and waits for it.
func (h *harness) stop(t testing.TB) {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("plugin Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("plugin did not stop within 10s")
	}
}

// testLogger logs through t at debug level when -v is given. A fuzz
// target's logger discards: the resources it builds log from inside the
// fuzz function, where f.Log panics.
func testLogger(t testing.TB) *slog.Logger {
	if _, fuzz := t.(*testing.F); fuzz || !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

var _ io.Writer = tWriter{}
