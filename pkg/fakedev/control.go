package fakedev

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// MaxControlLine is the longest command line Control accepts, in bytes.
// The longest valid command ("fault ac255 needs-reset") is far shorter; the
// limit only keeps a runaway writer from making the parser walk megabytes.
const MaxControlLine = 1024

// ControlUsage lists the commands Control accepts.
const ControlUsage = `commands (one per line; words separated by spaces or tabs):
  add [COUNT] [DRIVER]               hot-plug COUNT new devices, 1 to 256 (default 1), of
                                     DRIVER (fakedev or fakenpu; default fakedev);
                                     all of them or none (ENOSPC when they do not fit)
  remove DEVICE                      hot-unplug DEVICE (e.g. ac1)
  fault DEVICE [malfunction|needs-reset|corrupt]
                                     inject a fault (default malfunction); corrupt
                                     flips a bit of every job's answer, status unchanged
  recover DEVICE                     clear a malfunction or corruption
  reset DEVICE                       reset DEVICE and wait until it is back
DEVICE is a compute node name, acN (not acN_monitor). Errors: EINVAL for a
malformed command, ENODEV for a device that is not there, ENOSPC when add
does not fit, EAGAIN while the device resets.`

// controlOp is a parsed control command.
type controlOp struct {
	verb   string // add, remove, fault, recover, reset
	count  int    // add
	driver string // add
	device string // every verb but add
	fault  Fault  // fault
}

// controlArgs says how many arguments after the verb each command takes,
// and its usage; ok is false for an unknown verb.
func controlArgs(verb string) (minArgs, maxArgs int, usage string, ok bool) {
	switch verb {
	case "add":
		return 0, 2, "add [COUNT] [DRIVER]", true
	case "remove":
		return 1, 1, "remove DEVICE", true
	case "fault":
		return 1, 2, "fault DEVICE [malfunction|needs-reset|corrupt]", true
	case "recover":
		return 1, 1, "recover DEVICE", true
	case "reset":
		return 1, 1, "reset DEVICE", true
	}
	return 0, 0, "", false
}

// parseControl parses one command line without touching any device. The
// grammar is strict so that a typo never does something other than what
// was meant:
//
//   - Leading and trailing spaces, tabs, CR and LF are ignored (a writer's
//     final newline); inside the line, words are separated by runs of
//     spaces or tabs. Any other control character or non-ASCII byte,
//     including a newline inside the line (two commands in one write), is
//     EINVAL: the line runs nothing.
//   - Commands and fault kinds are lower case ("ADD" is unknown).
//   - Each command takes exactly the arguments ControlUsage shows; a
//     missing or extra one (a device named twice included) is EINVAL.
//   - COUNT is a decimal number without sign or leading zeros. 0, -1, +1,
//     01, 1x, 1.5 are EINVAL; a number above accel.MaxDevices is ENOSPC,
//     decided from its digits before anything is allocated.
//   - DEVICE is acN with N decimal without leading zeros (what
//     accel.ParseNodeName accepts) naming a compute node: acN_monitor, ac01,
//     AC0, ac-1 are EINVAL. Whether the device exists is decided later
//     (ENODEV).
//
// parseControl allocates nothing in proportion to the line or to a number
// in it: errors quote at most a short prefix of the offending word.
func parseControl(line string) (controlOp, error) {
	if len(line) > MaxControlLine {
		return controlOp{}, fmt.Errorf("command line of %d bytes is longer than the limit of %d: %w", len(line), MaxControlLine, syscall.EINVAL)
	}
	line = strings.Trim(line, " \t\r\n")
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '\n':
			return controlOp{}, fmt.Errorf("newline at byte %d: one command per line: %w", i, syscall.EINVAL)
		case c != ' ' && c != '\t' && (c < 0x21 || c > 0x7e):
			return controlOp{}, fmt.Errorf("byte %#02x at offset %d: commands are printable ASCII: %w", c, i, syscall.EINVAL)
		}
	}
	// Verb plus at most two arguments; one more word is enough to say
	// "too many" without collecting the rest.
	var words [4]string
	n := 0
	for rest := line; rest != "" && n < len(words); {
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			break
		}
		end := strings.IndexAny(rest, " \t")
		if end < 0 {
			end = len(rest)
		}
		words[n], rest = rest[:end], rest[end:]
		n++
	}
	if n == 0 {
		return controlOp{}, fmt.Errorf("empty command (want add, remove, fault, recover or reset): %w", syscall.EINVAL)
	}
	op := controlOp{verb: words[0]}
	args := words[1:n]
	minArgs, maxArgs, usage, ok := controlArgs(op.verb)
	if !ok {
		return controlOp{}, fmt.Errorf("unknown command %s (want add, remove, fault, recover or reset): %w", quote(op.verb), syscall.EINVAL)
	}
	if len(args) < minArgs {
		return controlOp{}, fmt.Errorf("%s needs a device name, e.g. %s ac0 (usage: %s): %w", op.verb, op.verb, usage, syscall.EINVAL)
	}
	if len(args) > maxArgs {
		return controlOp{}, fmt.Errorf("%s: too many arguments (usage: %s): %w", op.verb, usage, syscall.EINVAL)
	}
	if op.verb == "add" {
		op.count, op.driver = 1, DriverName
		if len(args) > 0 && strings.ContainsRune("0123456789+-", rune(args[0][0])) {
			c, err := parseCount(args[0])
			if err != nil {
				return controlOp{}, err
			}
			op.count, args = c, args[1:]
		}
		switch {
		case len(args) > 1 || (len(args) == 1 && strings.ContainsRune("0123456789+-", rune(args[0][0]))):
			return controlOp{}, fmt.Errorf("add: too many arguments (usage: %s): %w", usage, syscall.EINVAL)
		case len(args) == 1:
			if _, err := lookupDriver(args[0]); err != nil {
				return controlOp{}, fmt.Errorf("add: %s is neither a COUNT (a number from 1 to %d without sign or leading zeros) nor a driver %v: %w",
					quote(args[0]), accel.MaxDevices, DriverNames(), syscall.EINVAL)
			}
			op.driver = args[0]
		}
		return op, nil
	}
	if err := checkDeviceName(args[0]); err != nil {
		return controlOp{}, fmt.Errorf("%s: %w", op.verb, err)
	}
	op.device = args[0]
	if op.verb == "fault" {
		op.fault = FaultMalfunction
		if len(args) == 2 {
			op.fault = Fault(args[1])
			if op.fault != FaultMalfunction && op.fault != FaultNeedsReset && op.fault != FaultCorrupt {
				return controlOp{}, fmt.Errorf("unknown fault %s (want %s): %w", quote(args[1]), faultKinds, syscall.EINVAL)
			}
		}
	}
	return op, nil
}

// parseCount parses add's COUNT: 1 to accel.MaxDevices.
func parseCount(s string) (int, error) {
	digits := s != "" && (s[0] != '0')
	for i := 0; digits && i < len(s); i++ {
		digits = s[i] >= '0' && s[i] <= '9'
	}
	if !digits {
		return 0, fmt.Errorf("add: COUNT must be a number from 1 to %d without sign or leading zeros, got %s: %w", accel.MaxDevices, quote(s), syscall.EINVAL)
	}
	// Decided from the number of digits first, so no value of any size
	// is ever converted, let alone used to size anything.
	if len(s) > len(strconv.Itoa(accel.MaxDevices)) {
		return 0, fmt.Errorf("add: COUNT %s exceeds the limit of %d devices: %w", quote(s), accel.MaxDevices, syscall.ENOSPC)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("add: COUNT %s: %w", quote(s), syscall.EINVAL)
	}
	if n > accel.MaxDevices {
		return 0, fmt.Errorf("add: COUNT %d exceeds the limit of %d devices: %w", n, accel.MaxDevices, syscall.ENOSPC)
	}
	return n, nil
}

// checkDeviceName accepts compute node names, acN, and nothing else.
func checkDeviceName(name string) error {
	i, kind, ok := accel.ParseNodeName(name)
	switch {
	case !ok:
		return fmt.Errorf("%s is not a device name (want acN, e.g. ac0): %w", quote(name), syscall.EINVAL)
	case kind != accel.NodeCompute:
		return fmt.Errorf("%s is a monitor node: name the device by its compute node, %s: %w", quote(name), accel.ComputeName(i), syscall.EINVAL)
	}
	return nil
}

// quote quotes a word of a command for an error message, cut to a short
// prefix so that the message stays one short line.
func quote(s string) string {
	const limit = 32
	if len(s) > limit {
		return strconv.Quote(s[:limit]) + "..."
	}
	return strconv.Quote(s)
}

// Control runs one control command line (see ControlUsage and
// parseControl for the exact grammar) and returns a one-line result.
// Errors are one line and wrap a syscall.Errno:
//
//	EINVAL  malformed command; recover of a device that needs a reset
//	ENODEV  no such device (or it was removed meanwhile)
//	ENOSPC  add COUNT above accel.MaxDevices or above the free indices
//	EAGAIN  fault or recover while the device resets; reset during a reset
//
// A failed command changes nothing. A reset runs to completion even if ctx
// ends, so an interrupted caller never leaves a device half-reset.
func (s *Sim) Control(ctx context.Context, line string) (string, error) {
	op, err := parseControl(line)
	if err != nil {
		return "", err
	}
	switch op.verb {
	case "add":
		devs, err := s.AddDriver(op.driver, op.count)
		if err != nil {
			return "", fmt.Errorf("add: %w", err)
		}
		var b strings.Builder
		b.WriteString("added")
		for _, d := range devs {
			b.WriteString(" ")
			b.WriteString(d.Name())
		}
		return b.String(), nil
	case "remove":
		if err := s.Remove(op.device); err != nil {
			return "", err
		}
		return "removed " + op.device, nil
	case "fault":
		st, err := s.inject(op.device, op.fault)
		if err != nil {
			return "", err
		}
		if st == accel.StatusNeedsReset && op.fault == FaultMalfunction {
			return op.device + ": needs-reset (unchanged: a malfunction does not lift a pending reset)", nil
		}
		if op.fault == FaultCorrupt {
			return fmt.Sprintf("%s: corrupt (every job's answer has a bit flipped; status stays %s)", op.device, st), nil
		}
		return fmt.Sprintf("%s: %s", op.device, op.fault), nil
	case "recover":
		if err := s.Recover(op.device); err != nil {
			return "", err
		}
		return op.device + ": operational", nil
	case "reset":
		if err := s.Reset(context.WithoutCancel(ctx), op.device); err != nil {
			return "", err
		}
		d, err := s.lookup(op.device)
		if err != nil {
			return "", err
		}
		info := d.Info()
		return fmt.Sprintf("%s: %s after reset (reset_count %d)", op.device, info.Status, info.ResetCount), nil
	}
	// parseControl returns only the verbs above.
	return "", fmt.Errorf("unknown command %s: %w", quote(op.verb), syscall.EINVAL)
}
