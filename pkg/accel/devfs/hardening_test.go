package devfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
)

// runHardeningHelper implements the helper modes of this file:
//
//	nocap-control PATH  drop CAP_SYS_ADMIN from the effective set of one
//	                    locked thread, then from that thread: write "add\n"
//	                    to the inherited descriptor 3 (opened by a capable
//	                    process) and open PATH for writing; print both results
//	bind-open PATH      (root, in a private mount namespace) bind-mount PATH
//	                    on $DEVFS_TEST_BIND, become uid 65534, then open PATH
//	                    and the bind mount read-write; print both results
func runHardeningHelper(mode, path string) (int, bool) {
	if code, ok := runHolderHelper(mode, path); ok {
		return code, true
	}
	if code, ok := runUsernsHelper(mode, path); ok {
		return code, true
	}
	switch mode {
	case "flood":
		return floodHelper(path), true
	case "nocap-control":
		runtime.LockOSThread() // capabilities are per thread: stay on this one
		if err := dropEffectiveCap(capSysAdmin); err != nil {
			fmt.Println("capset:", err)
			return 1, true
		}
		_, err := os.NewFile(3, "inherited-control").Write([]byte("add\n"))
		fmt.Println(errName(err))
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		fmt.Println(errName(err))
		if f != nil {
			f.Close()
		}
		return 0, true
	case "bind-open":
		bind := os.Getenv("DEVFS_TEST_BIND")
		if err := unix.Mount(path, bind, "", unix.MS_BIND, ""); err != nil {
			fmt.Println("bind mount:", err)
			return 1, true
		}
		// Become uid/gid 65534 in every thread (syscall's, not unix's,
		// set-id calls apply to the whole process).
		if err := syscall.Setgroups(nil); err != nil {
			fmt.Println("setgroups:", err)
			return 1, true
		}
		if err := syscall.Setgid(65534); err != nil {
			fmt.Println("setgid:", err)
			return 1, true
		}
		if err := syscall.Setuid(65534); err != nil {
			fmt.Println("setuid:", err)
			return 1, true
		}
		for _, p := range []string{path, bind} {
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			fmt.Println(errName(err))
			if f != nil {
				f.Close()
			}
		}
		return 0, true
	}
	return 0, false
}

// dropEffectiveCap clears capability bit c from the calling thread's
// effective set.
func dropEffectiveCap(c uint) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[c/32].Effective &^= 1 << (c % 32)
	return unix.Capset(&hdr, &data[0])
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Regression (issue 10, item 3): rm, rmdir, mv, ln, mkdir, creat, mknod,
// chmod, chown, truncate and utimes anywhere in the mount must fail with
// EPERM — for root too — and leave every node in place. On 12137fa unlink
// and rmdir succeeded (the node vanished while its device stayed
// registered) and the rest failed with ENOTSUP or EROFS.
func TestMountRefusesChanges(t *testing.T) {
	m := mountSim(t, 2)
	names := dirNames(t, m.dir)
	sysNames := dirNames(t, m.path(devfsclient.SysDir))
	files := []string{"ac0", "ac0_monitor", "sys/events", "sys/control"}
	dirs := []string{".", "sys"}
	p := m.path
	type op struct {
		name string
		do   func() error
	}
	var ops []op
	for _, f := range files {
		ops = append(ops,
			op{"unlink " + f, func() error { return unix.Unlink(p(f)) }},
			op{"rename " + f, func() error { return unix.Rename(p(f), p(f)+".moved") }},
			op{"rename " + f + " over ac1", func() error { return unix.Rename(p(f), p("ac1")) }},
			op{"exchange " + f + " with ac1", func() error {
				return unix.Renameat2(unix.AT_FDCWD, p(f), unix.AT_FDCWD, p("ac1"), unix.RENAME_EXCHANGE)
			}},
			op{"link " + f, func() error { return unix.Link(p(f), p(f)+".link") }},
			op{"chmod " + f, func() error { return unix.Chmod(p(f), 0o777) }},
			op{"chown " + f, func() error { return unix.Chown(p(f), 1000, 1000) }},
			op{"utimes " + f, func() error { return unix.UtimesNano(p(f), []unix.Timespec{{Sec: 1}, {Sec: 1}}) }},
			op{"setxattr " + f, func() error { return unix.Setxattr(p(f), "user.x", []byte("1"), 0) }},
			op{"removexattr " + f, func() error { return unix.Removexattr(p(f), "user.x") }},
		)
		if f != "sys/control" { // see TestControlShellRedirect for its truncate
			ops = append(ops, op{"truncate " + f, func() error { return unix.Truncate(p(f), 0) }})
		}
	}
	for _, d := range dirs {
		ops = append(ops,
			op{"create in " + d, func() error {
				fd, err := unix.Open(p(d+"/new"), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
				if err == nil {
					unix.Close(fd)
				}
				return err
			}},
			op{"O_TMPFILE in " + d, func() error {
				fd, err := unix.Open(p(d), unix.O_TMPFILE|unix.O_WRONLY, 0o644)
				if err == nil {
					unix.Close(fd)
				}
				return err
			}},
			op{"mkdir in " + d, func() error { return unix.Mkdir(p(d+"/newdir"), 0o755) }},
			op{"mknod fifo in " + d, func() error { return unix.Mknod(p(d+"/fifo"), unix.S_IFIFO|0o644, 0) }},
			op{"mknod char in " + d, func() error { return unix.Mknod(p(d+"/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) }},
			op{"symlink in " + d, func() error { return unix.Symlink("ac0", p(d+"/sym")) }},
			op{"chmod dir " + d, func() error { return unix.Chmod(p(d), 0o777) }},
			op{"chown dir " + d, func() error { return unix.Chown(p(d), 1000, 1000) }},
			op{"utimes dir " + d, func() error { return unix.UtimesNano(p(d), []unix.Timespec{{Sec: 1}, {Sec: 1}}) }},
		)
	}
	ops = append(ops,
		op{"rmdir sys", func() error { return unix.Rmdir(p("sys")) }},
		op{"rename sys", func() error { return unix.Rename(p("sys"), p("sys2")) }},
		op{"rename ac0 into sys", func() error { return unix.Rename(p("ac0"), p("sys/ac0")) }},
	)
	for _, o := range ops {
		if err := o.do(); !errors.Is(err, unix.EPERM) {
			t.Errorf("%s: %v, want EPERM", o.name, err)
		}
	}
	if got := dirNames(t, m.dir); strings.Join(got, " ") != strings.Join(names, " ") {
		t.Errorf("root directory changed: %v, was %v", got, names)
	}
	if got := dirNames(t, m.path(devfsclient.SysDir)); strings.Join(got, " ") != strings.Join(sysNames, " ") {
		t.Errorf("sys directory changed: %v, was %v", got, sysNames)
	}
	for _, f := range files {
		st, err := os.Stat(p(f))
		if err != nil {
			t.Errorf("stat %s: %v", f, err)
			continue
		}
		want := map[string]os.FileMode{"ac0": 0o666, "ac0_monitor": 0o444, "sys/events": 0o444, "sys/control": 0o600}[f]
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", f, st.Mode().Perm(), want)
		}
	}
	// The devices still answer.
	if info := infoOf(t, p("ac0")); info.Name != "ac0" {
		t.Errorf("ac0 info after the attempts: %+v", info)
	}
}

// A shell's `echo CMD > sys/control` opens with O_TRUNC, which the kernel
// sends as a truncate to 0: that alone is accepted, as a no-op.
func TestControlShellRedirect(t *testing.T) {
	m := mountSim(t, 1)
	out, err := exec.Command("sh", "-c", "echo add > "+m.path("sys/control")).CombinedOutput()
	if err != nil {
		t.Fatalf("echo add > sys/control: %v: %s", err, out)
	}
	if _, err := os.Stat(m.path("ac1")); err != nil {
		t.Fatalf("ac1 after `echo add > sys/control`: %v", err)
	}
	if err := unix.Truncate(m.path("sys/control"), 1); !errors.Is(err, unix.EPERM) {
		t.Errorf("truncate sys/control to 1 byte: %v, want EPERM", err)
	}
}

// Regression (issue 10, item 5): a writer without CAP_SYS_ADMIN in its
// effective set gets EPERM, both opening sys/control for writing and
// writing to a descriptor a capable process opened; the refusal is logged
// with its pid. Root with the capability still succeeds. On 12137fa the
// capability-less writer's "add" ran.
func TestControlNeedsCapSysAdmin(t *testing.T) {
	p := probeControl(t, "nocap-control", nil)
	out, err := p.cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	if got := strings.Fields(string(out)); strings.Join(got, " ") != "EPERM EPERM" {
		t.Fatalf("write and open for writing without CAP_SYS_ADMIN: %q, want EPERM for both", out)
	}
	p.refusedThenCapable(t, "sys/control refused")
}

// controlProbe is a mounted one-device tree, a sys/control descriptor this
// (capable) process opened, and a test helper process ready to try the
// control file with that descriptor as fd 3 and the file's path as its
// argument.
type controlProbe struct {
	m    *testMount
	ctl  *os.File
	logs *syncBuffer
	cmd  *exec.Cmd
}

// probeControl prepares the helper `mode` (see helperEnviron), started
// with attr (nil: as this process).
func probeControl(t *testing.T, mode string, attr *syscall.SysProcAttr) *controlProbe {
	t.Helper()
	logs := &syncBuffer{}
	m := mountSimWith(t, 1, filepath.Join(t.TempDir(), "dev"), accel.Options{},
		Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctl, err := os.OpenFile(m.path("sys/control"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	cmd := exec.Command(os.Args[0], "-test.run=^$", m.path("sys/control"))
	cmd.Env = helperEnviron(mode)
	cmd.ExtraFiles = []*os.File{ctl}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = attr
	return &controlProbe{m: m, ctl: ctl, logs: logs, cmd: cmd}
}

// refusedThenCapable checks, after the helper ran, that none of its
// commands ran and that the refusal was logged with its pid and wantLog;
// then that this capable process, through the same descriptor, still adds
// a device.
func (p *controlProbe) refusedThenCapable(t *testing.T, wantLog string) {
	t.Helper()
	if n := len(p.m.reg.Devices()); n != 1 {
		t.Fatalf("%d devices after the refused writes, want 1: a command ran", n)
	}
	pid := fmt.Sprintf("pid=%d", p.cmd.Process.Pid)
	if l := p.logs.String(); !strings.Contains(l, wantLog) || !strings.Contains(l, pid) {
		t.Errorf("no log line naming %s and %q:\n%s", pid, wantLog, l)
	}
	if _, err := p.ctl.Write([]byte("add\n")); err != nil {
		t.Fatalf("write with CAP_SYS_ADMIN: %v", err)
	}
	if got, _ := io.ReadAll(p.ctl); !strings.Contains(string(got), "ac1") || len(p.m.reg.Devices()) != 2 {
		t.Fatalf("result %q and %d devices, want ac1 added", got, len(p.m.reg.Devices()))
	}
}

// Regression (issue 10, item 6): every mode is honoured exactly, 0000
// included (on 12137fa a ComputeMode of 0 became 0666), and modes beyond
// 0777 are refused.
func TestModesHonouredExactly(t *testing.T) {
	m := mountSimWith(t, 1, filepath.Join(t.TempDir(), "dev"), accel.Options{},
		Options{ComputeMode: Mode(0), MonitorMode: Mode(0o440), DirMode: Mode(0o750), GID: 4242})
	for name, want := range map[string]os.FileMode{"ac0": 0, "ac0_monitor": 0o440, ".": os.ModeDir | 0o750} {
		st, err := os.Stat(m.path(name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want&^os.ModeDir|st.Mode()&os.ModeDir || st.Mode().Perm() != want.Perm() {
			t.Errorf("%s mode %v, want %v", name, st.Mode(), want)
		}
		if gid := st.Sys().(*syscall.Stat_t).Gid; gid != 4242 {
			t.Errorf("%s gid %d, want 4242", name, gid)
		}
	}
	for _, bad := range []os.FileMode{0o1777, 0o4755, os.ModeSetuid | 0o755} {
		srv, err := Mount(filepath.Join(t.TempDir(), "dev"), accel.NewRegistry(accel.Options{}), Options{ComputeMode: Mode(bad)})
		if err == nil {
			_ = srv.Unmount(5 * time.Second)
		}
		if err == nil || !strings.Contains(err.Error(), "at most 0777") {
			t.Errorf("mount with compute mode %v: %v, want a refusal", bad, err)
		}
	}
}

// Regression (issue 10, item 6): the root directory (DirMode 0700) keeps a
// non-root host user away from the compute nodes, while the same user
// opens the node through a bind mount, as a workload container does. With
// DirMode 0755 (the control case: on 12137fa the directory was 0755) the
// user reaches the node through the mount.
func TestRootDirKeepsHostUsersOut(t *testing.T) {
	requireFUSE(t)
	base, err := os.MkdirTemp("", "devfs-dirmode-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	bind := filepath.Join(base, "bind-ac0")
	if err := os.WriteFile(bind, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		opts    Options
		direct  string // open of DIR/ac0 as uid 65534
		viaBind string // open of the bind mount of DIR/ac0 as uid 65534
	}{
		{"default 0700", Options{}, "EACCES", "ok"},
		{"0755", Options{DirMode: Mode(0o755)}, "ok", "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mountSimWith(t, 1, filepath.Join(base, strings.ReplaceAll(tc.name, " ", "-")), accel.Options{}, tc.opts)
			cmd := exec.Command(os.Args[0], "-test.run=^$", m.path("ac0"))
			cmd.Env = helperEnviron("bind-open", "DEVFS_TEST_BIND="+bind)
			cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS} // Go also makes / private
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("helper: %v: %s", err, out)
			}
			got := strings.Fields(string(out))
			if len(got) != 2 || got[0] != tc.direct || got[1] != tc.viaBind {
				t.Fatalf("uid 65534: open DIR/ac0 → %v, want %s; open of its bind mount → want %s", got, tc.direct, tc.viaBind)
			}
		})
	}
	if mounted, _ := IsMountpoint(bind); mounted {
		t.Fatal("the bind mount leaked out of the helper's mount namespace")
	}
}

// recorder is a Controller that records the commands it runs.
type recorder struct {
	mu   sync.Mutex
	cmds []string
}

func (r *recorder) Control(ctx context.Context, command string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if strings.HasPrefix(command, "fail") {
		return "", fmt.Errorf("%q failed: %w", command, syscall.EINVAL)
	}
	r.cmds = append(r.cmds, command)
	return fmt.Sprintf("ran %d", len(r.cmds)), nil
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cmds
	r.cmds = nil
	return c
}

// Regression (issue 10, item 10a): a write(2) over 128 KiB reaches the
// daemon as several requests; lines are joined again across them, each
// runs as one command in order, and a line over MaxControlLine is refused
// whole while its neighbours run. On 12137fa each request was parsed as
// one command.
func TestControlLinesAcrossSplitWrites(t *testing.T) {
	rec := &recorder{}
	m := mountSimWith(t, 0, filepath.Join(t.TempDir(), "dev"), accel.Options{}, Options{Control: rec})
	var want []string
	var data bytes.Buffer
	line := func(i, n int) string { // a command of n bytes
		s := fmt.Sprintf("cmd %d ", i)
		return s + strings.Repeat("x", n-len(s))
	}
	for i := range 300 { // 300 lines of up to 4000 bytes: about 600 KiB
		l := line(i, 1000+i*10)
		if i == 100 {
			data.WriteString(strings.Repeat("y", MaxControlLine+1) + "\n") // too long by one byte
		}
		if i == 200 {
			data.WriteString(strings.Repeat("z", 300<<10) + "\n") // spans several requests
		}
		want = append(want, l)
		data.WriteString(l + "\n")
	}
	data.WriteString(line(300, MaxControlLine)) // exactly at the limit, no trailing newline
	want = append(want, line(300, MaxControlLine))

	f, err := os.OpenFile(m.path("sys/control"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := unix.Write(int(f.Fd()), data.Bytes()) // one write(2)
	if err != nil || n != data.Len() {
		t.Fatalf("write(2) of %d bytes: %d, %v", data.Len(), n, err)
	}
	results, err := io.ReadAll(f) // the read ends the unterminated last line
	if err != nil {
		t.Fatal(err)
	}
	got := rec.take()
	if len(got) != len(want) {
		t.Fatalf("%d commands ran, want %d (one per line, the too-long lines none)", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("command %d ran as %.40q… (%d bytes), want %.40q… (%d bytes)", i, got[i], len(got[i]), want[i], len(want[i]))
		}
	}
	lines := strings.Split(strings.TrimSuffix(string(results), "\n"), "\n")
	var refused []string
	for _, l := range lines {
		if strings.HasPrefix(l, "error: ") {
			refused = append(refused, l)
		}
	}
	if len(lines) != len(want)+2 || len(refused) != 2 ||
		!strings.Contains(refused[0], fmt.Sprintf("control line of %d bytes refused: the limit is %d bytes", MaxControlLine+1, MaxControlLine)) ||
		!strings.Contains(refused[1], fmt.Sprintf("control line of %d bytes refused", 300<<10)) {
		t.Fatalf("%d result lines, refusals %q; want %d results and 2 refusals", len(lines), refused, len(want)+2)
	}
}

// Issue 10, item 10a: the documented semantics of small writes.
func TestControlLineSemantics(t *testing.T) {
	rec := &recorder{}
	m := mountSimWith(t, 0, filepath.Join(t.TempDir(), "dev"), accel.Options{}, Options{Control: rec})
	open := func() *os.File {
		f, err := os.OpenFile(m.path("sys/control"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	for _, tc := range []struct {
		name    string
		writes  []string
		end     string // "read" or "close"
		werr    error  // of the last write
		cmds    []string
		results string // read back (end == "read")
	}{
		{"one line", []string{"a 1\n"}, "read", nil, []string{"a 1"}, "ran 1\n"},
		{"no newline, then read", []string{"a 1"}, "read", nil, []string{"a 1"}, "ran 1\n"},
		{"no newline, then close", []string{"a 1"}, "close", nil, []string{"a 1"}, ""},
		{"several lines in order", []string{"a 1\n\n  b 2  \r\nc 3\n"}, "read", nil, []string{"a 1", "b 2", "c 3"}, "ran 1\nran 2\nran 3\n"},
		{"a line over several writes", []string{"a", " 1", "\nb 2\n"}, "read", nil, []string{"a 1", "b 2"}, "ran 1\nran 2\n"},
		{"a single failing line fails the write", []string{"fail 1\n"}, "read", syscall.EINVAL, nil, "error: \"fail 1\" failed: invalid argument\n"},
		{"a failing line among others: the write succeeds", []string{"a 1\nfail 2\nb 3\n"}, "read", nil, []string{"a 1", "b 3"},
			"ran 1\nerror: \"fail 2\" failed: invalid argument\nran 2\n"},
		{"a too-long line in one write", []string{strings.Repeat("q", MaxControlLine+1) + "\n"}, "read", syscall.EINVAL, nil,
			fmt.Sprintf("error: control line of %d bytes refused: the limit is %d bytes per line (none of it ran)\n", MaxControlLine+1, MaxControlLine)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := open()
			var werr error
			for _, w := range tc.writes {
				_, werr = unix.Write(int(f.Fd()), []byte(w))
			}
			if !errors.Is(werr, tc.werr) { // errors.Is(nil, nil) is true
				t.Errorf("last write: %v, want %v", werr, tc.werr)
			}
			var results []byte
			if tc.end == "read" {
				results, _ = io.ReadAll(f)
			}
			f.Close()
			if got := rec.take(); strings.Join(got, "|") != strings.Join(tc.cmds, "|") {
				t.Errorf("commands %q, want %q", got, tc.cmds)
			}
			if string(results) != tc.results {
				t.Errorf("results %q, want %q", results, tc.results)
			}
		})
	}
	// devfsclient.Control, what `sim ctl` uses, still gets the result and errors.
	if out, err := devfsclient.Control(m.dir, "a 1"); err != nil || out != "ran 1" {
		t.Errorf("Control: %q, %v", out, err)
	}
	if _, err := devfsclient.Control(m.dir, "fail 2"); err == nil || err.Error() != `"fail 2" failed: invalid argument` {
		t.Errorf("Control of a failing command: %v", err)
	}
	if _, err := devfsclient.Control(m.dir, "a 1\nb 2"); err == nil || !strings.Contains(err.Error(), "a command is one line") {
		t.Errorf("Control with a newline: %v", err)
	}
	if got := rec.take(); len(got) != 1 {
		t.Errorf("Control ran %q, want only the first command", got)
	}
}
