// Package uevent receives the kernel's device events (uevents): the
// messages the driver core multicasts on a NETLINK_KOBJECT_UEVENT socket
// when a device is added, removed or changed, the same ones udev reads.
//
// Only messages sent by the kernel itself (netlink port 0) are accepted:
// in a network namespace, a process with CAP_NET_ADMIN can multicast to the
// uevent group too, and its messages must not pass for the kernel's.
// Messages udev re-sends for its own clients (group 2, "libudev" header)
// are not subscribed to.
//
// Kernel uevents reach every network namespace owned by the initial user
// namespace (Linux 4.18+), so a container in its own network namespace
// receives them without host networking.
package uevent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Event is one uevent.
type Event struct {
	// Action is what happened: add, remove, change, move, online, offline,
	// bind or unbind.
	Action string
	// DevPath is the device's path below /sys, e.g.
	// /devices/pci0000:00/0000:00:0b.0/accel/accel0.
	DevPath string
	// Subsystem is the device's class or bus, e.g. accel or pci.
	Subsystem string
	// DevName is the device node's name below /dev, e.g. accel/accel0
	// ("" for devices without a node).
	DevName string
	// Seq is the kernel's sequence number (SEQNUM), 0 when absent.
	Seq uint64
	// Env holds every KEY=value pair of the message, the above included.
	Env map[string]string
}

// Name returns the last element of DevPath (the device's name, e.g.
// accel0).
func (e Event) Name() string {
	return e.DevPath[strings.LastIndexByte(e.DevPath, '/')+1:]
}

// maxMessage bounds one uevent: the kernel builds a message in a buffer of
// UEVENT_BUFFER_SIZE (2048) bytes plus its "action@devpath" header, whose
// devpath is at most PATH_MAX.
const maxMessage = 2048 + 4096 + 64

// Parse decodes one kernel uevent message: "ACTION@DEVPATH" followed by
// KEY=value strings, each terminated by a NUL byte. It refuses a message
// whose header and ACTION/DEVPATH disagree, or that lacks either.
func Parse(msg []byte) (Event, error) {
	if len(msg) > maxMessage {
		return Event{}, fmt.Errorf("uevent of %d bytes: longer than the kernel sends (%d)", len(msg), maxMessage)
	}
	fields := bytes.Split(bytes.TrimRight(msg, "\x00"), []byte{0})
	header := string(fields[0])
	at := strings.IndexByte(header, '@')
	if at <= 0 || at == len(header)-1 {
		return Event{}, fmt.Errorf("uevent header %q is not ACTION@DEVPATH", truncate(header))
	}
	ev := Event{Env: make(map[string]string, len(fields)-1)}
	for _, f := range fields[1:] {
		k, v, ok := bytes.Cut(f, []byte{'='})
		if !ok || len(k) == 0 {
			return Event{}, fmt.Errorf("uevent %q: field %q is not KEY=value", truncate(header), truncate(string(f)))
		}
		ev.Env[string(k)] = string(v)
	}
	ev.Action, ev.DevPath = ev.Env["ACTION"], ev.Env["DEVPATH"]
	if ev.Action != header[:at] || ev.DevPath != header[at+1:] {
		return Event{}, fmt.Errorf("uevent %q: ACTION=%q DEVPATH=%q do not match its header", truncate(header), truncate(ev.Action), truncate(ev.DevPath))
	}
	if !strings.HasPrefix(ev.DevPath, "/") {
		return Event{}, fmt.Errorf("uevent %q: DEVPATH is not absolute", truncate(header))
	}
	ev.Subsystem, ev.DevName = ev.Env["SUBSYSTEM"], ev.Env["DEVNAME"]
	if s, ok := ev.Env["SEQNUM"]; ok {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return Event{}, fmt.Errorf("uevent %q: SEQNUM %q: %w", truncate(header), truncate(s), err)
		}
		ev.Seq = n
	}
	return ev, nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// ErrOverflow reports that the kernel dropped uevents because the socket's
// receive buffer was full (ENOBUFS): the reader must assume it missed some
// and re-read the state it follows. The socket stays usable.
var ErrOverflow = errors.New("uevents were lost: the receive buffer overflowed")

// kernelGroup is the multicast group the kernel sends uevents to (udev's
// re-sent ones go to group 2).
const kernelGroup = 1

// rcvBuf is the receive buffer asked for: udev asks for 128 MiB, but
// accelerators come and go by the handful; 4 MiB holds a few thousand
// events (a full PCI rescan of a large machine).
const rcvBuf = 4 << 20

// Conn is a socket subscribed to the kernel's uevents.
type Conn struct {
	f  *os.File
	rc syscall.RawConn
	// accept decides which senders' messages are taken (nil: the kernel's
	// only, netlink port 0). Tests accept their own.
	accept func(from *unix.SockaddrNetlink) bool
	buf    []byte
}

// Dial opens a socket subscribed to the kernel's uevents, in the caller's
// network namespace.
func Dial() (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	// A larger buffer needs CAP_NET_ADMIN (FORCE); without it the
	// system's rmem_max applies, and an overflow is reported, not hidden.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: kernelGroup}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uevent socket: bind to the kernel's group: %w", err)
	}
	f := os.NewFile(uintptr(fd), "uevent")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	return &Conn{f: f, rc: rc, buf: make([]byte, maxMessage+1)}, nil
}

// Read returns the next uevent. It blocks until one arrives or Close is
// called (os.ErrClosed). A malformed message is returned as an error and
// skipped; ErrOverflow says some were lost. Messages from senders other
// than the kernel are dropped silently.
func (c *Conn) Read() (Event, error) {
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := c.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), c.buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return Event{}, err
		}
		switch {
		case errors.Is(rerr, unix.ENOBUFS):
			return Event{}, ErrOverflow
		case errors.Is(rerr, unix.EINTR):
			continue
		case rerr != nil:
			return Event{}, fmt.Errorf("read uevent: %w", rerr)
		}
		nl, ok := from.(*unix.SockaddrNetlink)
		if !ok || !c.accepts(nl) {
			continue
		}
		if n > maxMessage {
			return Event{}, fmt.Errorf("uevent longer than %d bytes: skipped", maxMessage)
		}
		return Parse(c.buf[:n])
	}
}

func (c *Conn) accepts(from *unix.SockaddrNetlink) bool {
	if c.accept != nil {
		return c.accept(from)
	}
	return from.Pid == 0
}

// Close closes the socket; a blocked Read returns.
func (c *Conn) Close() error { return c.f.Close() }
