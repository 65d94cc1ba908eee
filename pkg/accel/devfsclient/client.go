// Package devfsclient is the client side of an accel device tree served by
// package devfs (the simulator's FUSE mount): the layout of its sys
// directory, control commands, the event stream and the list of device
// nodes. The plugin reads simulated trees through it without linking the
// FUSE server.
package devfsclient

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Names of the files in a tree's sys directory.
const (
	SysDir      = "sys"
	EventsFile  = "events"
	ControlFile = "control"
)

// MaxControlLine is the longest control command line, in bytes, not
// counting its newline. The server refuses a longer line whole: none of it
// runs.
const MaxControlLine = 4096

// Control sends one command to the simulator serving dir and returns its
// result line. A failed command returns the simulator's own message. The
// command is one line (see devfs's sys/control): one with a newline in it is
// refused here rather than run as several.
func Control(dir, command string) (string, error) {
	if strings.ContainsAny(command, "\n\r") {
		return "", fmt.Errorf("control command %q: a command is one line; send several commands one at a time", command)
	}
	if len(command) > MaxControlLine {
		return "", fmt.Errorf("control command of %d bytes: the limit is %d bytes per line", len(command), MaxControlLine)
	}
	path := filepath.Join(dir, SysDir, ControlFile)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s: no simulator control file (is `accel-plugin sim --dir %s` running?)", path, dir)
		}
		if errors.Is(err, os.ErrPermission) {
			return "", fmt.Errorf("open %s: %w (driving the simulator needs root with CAP_SYS_ADMIN)", path, err)
		}
		return "", fmt.Errorf("open control file: %w", err)
	}
	defer f.Close()
	_, werr := f.Write([]byte(command + "\n"))
	out, rerr := io.ReadAll(f)
	msg := strings.TrimSpace(string(out))
	if m, ok := strings.CutPrefix(msg, "error: "); ok {
		return "", errors.New(m)
	}
	if werr != nil {
		return "", fmt.Errorf("control %q: %w", command, werr)
	}
	if rerr != nil {
		return "", fmt.Errorf("read control result: %w", rerr)
	}
	return msg, nil
}

// Nodes lists the device indices that have nodes in dir, in order.
func Nodes(dir string) ([]int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	seen := map[int]bool{}
	var out []int
	for _, e := range entries {
		if i, _, ok := accel.ParseNodeName(e.Name()); ok && !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	sort.Ints(out)
	return out, nil
}

// EventStream follows a simulator's sys/events file. Next blocks until the
// next event; Close may be called from another goroutine to end a blocked
// Next, which then returns io.EOF.
type EventStream struct {
	f     *os.File
	sc    *bufio.Scanner
	wake  int // a second descriptor for the same open file; see Close
	close sync.Once
}

// OpenEvents opens dir's event file. Events start from the moment of the
// open, so a consumer opens the stream first and reads the nodes second,
// and misses nothing in between.
func OpenEvents(dir string) (*EventStream, error) {
	path := filepath.Join(dir, SysDir, EventsFile)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no event file (is `accel-plugin sim --dir %s` running?)", path, dir)
		}
		return nil, fmt.Errorf("open event file: %w", err)
	}
	wake, err := unix.Dup(int(f.Fd()))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("dup event file: %w", err)
	}
	unix.CloseOnExec(wake)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 1<<20)
	return &EventStream{f: f, sc: sc, wake: wake}, nil
}

// Next returns the next event. It returns io.EOF once the stream has ended
// (Close was called, or the simulator is shutting down) and the read error
// (e.g. ENOTCONN when the simulator died) otherwise.
func (s *EventStream) Next() (accel.Event, error) {
	if !s.sc.Scan() {
		if err := s.sc.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
			return accel.Event{}, fmt.Errorf("read events: %w", err)
		}
		return accel.Event{}, io.EOF
	}
	var ev accel.Event
	if err := json.Unmarshal(s.sc.Bytes(), &ev); err != nil {
		return accel.Event{}, fmt.Errorf("decode event %q: %w", s.sc.Text(), err)
	}
	return ev, nil
}

// Close ends the stream. A read blocked in the simulator is not interrupted
// by closing its own descriptor (the kernel keeps the file until the read
// returns), but closing any descriptor sends FLUSH, which the simulator
// answers by ending the stream. Close therefore closes the spare
// descriptor first; the blocked Next returns io.EOF.
func (s *EventStream) Close() error {
	var err error
	s.close.Do(func() {
		unix.Close(s.wake)
		err = s.f.Close()
	})
	return err
}
