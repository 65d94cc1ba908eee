package kind

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moby/sys/capability"
)

// RuncWrapperName is the name under which the kindcluster binary acts as
// dockerd's OCI runtime (a symlink to it, dockerd's default runtime when
// the host lacks capabilities): RunRuncWrapper.
const RuncWrapperName = "accel-runc-capfix"

// runcPath is the runc the wrapper hands over to (Debian's, which
// docker.io uses).
const runcPath = "/usr/sbin/runc"

// MissingCapabilities lists the capabilities the kernel knows that this
// process's bounding set lacks, as OCI names (CAP_SYS_RESOURCE). Docker
// grants a privileged container every capability it knows, and runc fails
// to start it ("unable to apply caps: operation not permitted") when one
// is outside the bounding set.
func MissingCapabilities() ([]string, error) {
	caps, err := capability.NewPid2(0)
	if err != nil {
		return nil, err
	}
	if err := caps.Load(); err != nil {
		return nil, err
	}
	last, err := capability.LastCap()
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, c := range capability.ListKnown() {
		if c <= last && !caps.Get(capability.BOUNDING, c) {
			missing = append(missing, "CAP_"+strings.ToUpper(c.String()))
		}
	}
	return missing, nil
}

// RunRuncWrapper is the runtime dockerd runs instead of runc where the
// host lacks capabilities: it removes the missing ones from the container's
// OCI config (create, run: the bundle's config.json) or process (exec
// --process), then execs runc with the same arguments. It returns only on
// error.
func RunRuncWrapper(args []string) error {
	missing, err := MissingCapabilities()
	if err != nil {
		return fmt.Errorf("%s: read the capability sets: %w", RuncWrapperName, err)
	}
	if len(missing) > 0 {
		if file, proc := specFile(args); file != "" {
			if err := dropCapabilities(file, proc, missing); err != nil {
				return fmt.Errorf("%s: %w", RuncWrapperName, err)
			}
		}
	}
	return syscall.Exec(runcPath, append([]string{"runc"}, args...), os.Environ())
}

// specFile finds, in runc's arguments, the file naming the capabilities:
// the bundle's config.json for create and run (--bundle/-b, default the
// working directory), the --process/-p file for exec. proc tells which
// (a process file is the spec's "process" object alone). Only the
// command's options are read: they end at the container ID (the first
// argument that is neither an option nor an option's value) or at "--".
func specFile(args []string) (file string, proc bool) {
	cmd := -1
	for i, a := range args {
		if a == "create" || a == "run" || a == "exec" {
			cmd = i
			break
		}
	}
	if cmd < 0 {
		return "", false
	}
	want := map[bool][2]string{false: {"bundle", "b"}, true: {"process", "p"}}[args[cmd] == "exec"]
	found := ""
	for i := cmd + 1; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") {
			break // the container ID: what follows is not runc's
		}
		name, val, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !inline && runcValueFlags[name] && i+1 < len(args) {
			i++
			val = args[i]
		}
		if name == want[0] || name == want[1] {
			found = val
		}
	}
	if args[cmd] == "exec" {
		return found, true
	}
	if found == "" {
		found = "."
	}
	return filepath.Join(found, "config.json"), false
}

// runcValueFlags are the options of runc create, run and exec that take a
// value (runc 1.1's, as go-runc passes them).
var runcValueFlags = map[string]bool{
	"bundle": true, "b": true, "console-socket": true, "pid-file": true, "preserve-fds": true,
	"process": true, "p": true, "cwd": true, "env": true, "e": true, "user": true, "u": true,
	"additional-gids": true, "g": true, "process-label": true, "apparmor": true, "cap": true, "c": true, "cgroup": true,
}

// dropCapabilities removes missing from every capability set in file (a
// whole spec, or a process object when proc), keeping every other field.
func dropCapabilities(file string, proc bool, missing []string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	process := doc
	if !proc {
		raw, ok := doc["process"]
		if !ok {
			return nil
		}
		if err := json.Unmarshal(raw, &process); err != nil {
			return fmt.Errorf("%s: process: %w", file, err)
		}
	}
	raw, ok := process["capabilities"]
	if !ok || string(raw) == "null" {
		return nil
	}
	var sets map[string][]string
	if err := json.Unmarshal(raw, &sets); err != nil {
		return fmt.Errorf("%s: capabilities: %w", file, err)
	}
	drop := map[string]bool{}
	for _, m := range missing {
		drop[m] = true
	}
	for name, caps := range sets {
		kept := caps[:0]
		for _, c := range caps {
			if !drop[c] {
				kept = append(kept, c)
			}
		}
		sets[name] = kept
	}
	if process["capabilities"], err = json.Marshal(sets); err != nil {
		return err
	}
	if !proc {
		if doc["process"], err = json.Marshal(process); err != nil {
			return err
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	return os.WriteFile(file, out, st.Mode().Perm())
}

// installRuncWrapper links the running binary as RuncWrapperName in dir
// and returns the link: dockerd's runtime. The binary must be one that
// calls RunRuncWrapper when started under that name (kindcluster).
func installRuncWrapper(dir string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(runcPath); err != nil {
		return "", fmt.Errorf("runc is not at %s (apt-get install runc): %w", runcPath, err)
	}
	link := filepath.Join(dir, RuncWrapperName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := os.Symlink(self, link); err != nil {
		return "", err
	}
	if _, err := exec.LookPath(link); err != nil {
		return "", err
	}
	return link, nil
}
