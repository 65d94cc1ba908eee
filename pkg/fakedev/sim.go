package fakedev

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Config describes the simulated hardware. The zero value of a field means
// its default.
type Config struct {
	// Seed makes serials differ between simulated machines (default "accel-sim").
	Seed string
	// Model is the model name every device reports (default "Simulated Accel SA-1").
	Model string
	// MemoryTotal is each device's memory in bytes (default 16 GiB).
	MemoryTotal uint64
	// NUMANodes spreads devices round-robin by slot over this many NUMA
	// nodes (default 1).
	NUMANodes int
	// ResetDuration is how long a reset keeps a device in_reset (default 100ms).
	ResetDuration time.Duration
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Seed == "" {
		c.Seed = "accel-sim"
	}
	if c.Model == "" {
		c.Model = "Simulated Accel SA-1"
	}
	if c.MemoryTotal == 0 {
		c.MemoryTotal = 16 << 30
	}
	if c.NUMANodes <= 0 {
		c.NUMANodes = 1
	}
	if c.ResetDuration <= 0 {
		c.ResetDuration = 100 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Serial returns the serial of the device in slot of a simulator seeded
// with seed: the same inputs give the same serial on every run.
func Serial(seed string, slot int) string {
	sum := sha256.Sum256([]byte(seed + "/" + strconv.Itoa(slot)))
	return "SIM-" + strings.ToUpper(hex.EncodeToString(sum[:6]))
}

// Fault is a fault that can be injected into a device.
type Fault string

// Injectable faults.
const (
	// FaultMalfunction makes the device report malfunction; it clears by
	// Recover or Reset.
	FaultMalfunction Fault = "malfunction"
	// FaultNeedsReset makes the device report needs_reset; only Reset clears it.
	FaultNeedsReset Fault = "needs-reset"
)

// Sim is a simulated bus of fake devices registered into an accel registry.
// Slots (and so serials) are handed out in order and never reused, so a
// hot-plugged device is always a new device.
type Sim struct {
	reg *accel.Registry
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	nextSlot int
}

// New returns a simulator registering into reg, with no devices yet.
func New(reg *accel.Registry, cfg Config) *Sim {
	cfg.setDefaults()
	return &Sim{reg: reg, cfg: cfg, log: cfg.Logger}
}

// Add hot-plugs one new device and returns it.
func (s *Sim) Add() (*accel.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	drv := newDevice(s.cfg, s.nextSlot)
	d, err := s.reg.Register(drv)
	if err != nil {
		return nil, fmt.Errorf("hot-plug: %w", err)
	}
	s.nextSlot++
	return d, nil
}

// Remove hot-unplugs the device with node name name.
func (s *Sim) Remove(name string) error {
	d, err := s.lookup(name)
	if err != nil {
		return err
	}
	return s.reg.Unregister(d)
}

// Inject puts device name into the fault state f.
func (s *Sim) Inject(name string, f Fault) error {
	d, err := s.lookup(name)
	if err != nil {
		return err
	}
	switch f {
	case FaultMalfunction:
		return d.SetStatus(accel.StatusMalfunction)
	case FaultNeedsReset:
		return d.SetStatus(accel.StatusNeedsReset)
	}
	return fmt.Errorf("unknown fault %q (want %s or %s): %w", f, FaultMalfunction, FaultNeedsReset, syscall.EINVAL)
}

// Recover clears a malfunction without a reset, as when a transient fault
// goes away. A device that needs a reset must be reset.
func (s *Sim) Recover(name string) error {
	d, err := s.lookup(name)
	if err != nil {
		return err
	}
	switch st := d.Status(); st {
	case accel.StatusMalfunction, accel.StatusOperational:
		return d.SetStatus(accel.StatusOperational)
	default:
		return fmt.Errorf("%s is %s: only a reset recovers it: %w", name, st, syscall.EINVAL)
	}
}

// Reset resets device name and waits for it to finish.
func (s *Sim) Reset(ctx context.Context, name string) error {
	d, err := s.lookup(name)
	if err != nil {
		return err
	}
	return d.Reset(ctx)
}

func (s *Sim) lookup(name string) (*accel.Device, error) {
	d, err := s.reg.Lookup(name)
	if err != nil {
		return nil, err
	}
	if _, ok := d.Driver().(*Device); !ok {
		return nil, fmt.Errorf("%s is not a simulated device: %w", name, syscall.EINVAL)
	}
	return d, nil
}

// ControlUsage lists the commands Control accepts.
const ControlUsage = `commands:
  add [COUNT]                        hot-plug COUNT new devices (default 1)
  remove DEVICE                      hot-unplug DEVICE (e.g. ac1)
  fault DEVICE [malfunction|needs-reset]  inject a fault (default malfunction)
  recover DEVICE                     clear a malfunction
  reset DEVICE                       reset DEVICE and wait until it is back`

// Control runs one control command line (see ControlUsage) and returns a
// one-line result. Errors wrap a syscall.Errno: EINVAL for a malformed
// command, ENODEV for an unknown device. A reset runs to completion even if
// ctx ends, so an interrupted caller never leaves a device half-reset.
func (s *Sim) Control(ctx context.Context, line string) (string, error) {
	args := strings.Fields(line)
	if len(args) == 0 {
		return "", fmt.Errorf("empty command (want add, remove, fault, recover or reset): %w", syscall.EINVAL)
	}
	cmd, args := args[0], args[1:]
	needDevice := func() (string, error) {
		if len(args) < 1 {
			return "", fmt.Errorf("%s needs a device name, e.g. %s ac0: %w", cmd, cmd, syscall.EINVAL)
		}
		return args[0], nil
	}
	maxArgs := map[string]int{"add": 1, "remove": 1, "fault": 2, "recover": 1, "reset": 1}
	if n, ok := maxArgs[cmd]; ok && len(args) > n {
		return "", fmt.Errorf("%s: too many arguments %q: %w", cmd, args, syscall.EINVAL)
	}
	switch cmd {
	case "add":
		n := 1
		if len(args) == 1 {
			v, err := strconv.Atoi(args[0])
			if err != nil || v < 1 {
				return "", fmt.Errorf("add: COUNT must be a positive number, got %q: %w", args[0], syscall.EINVAL)
			}
			n = v
		}
		names := make([]string, 0, n)
		for range n {
			d, err := s.Add()
			if err != nil {
				if len(names) > 0 {
					return "", fmt.Errorf("added %s, then: %w", strings.Join(names, " "), err)
				}
				return "", err
			}
			names = append(names, d.Name())
		}
		return "added " + strings.Join(names, " "), nil
	case "remove":
		name, err := needDevice()
		if err != nil {
			return "", err
		}
		if err := s.Remove(name); err != nil {
			return "", err
		}
		return "removed " + name, nil
	case "fault":
		name, err := needDevice()
		if err != nil {
			return "", err
		}
		f := FaultMalfunction
		if len(args) == 2 {
			f = Fault(args[1])
		}
		if err := s.Inject(name, f); err != nil {
			return "", err
		}
		return fmt.Sprintf("%s: %s", name, f), nil
	case "recover":
		name, err := needDevice()
		if err != nil {
			return "", err
		}
		if err := s.Recover(name); err != nil {
			return "", err
		}
		return name + ": operational", nil
	case "reset":
		name, err := needDevice()
		if err != nil {
			return "", err
		}
		if err := s.Reset(context.WithoutCancel(ctx), name); err != nil {
			return "", err
		}
		d, err := s.lookup(name)
		if err != nil {
			return "", err
		}
		info := d.Info()
		return fmt.Sprintf("%s: %s after reset (reset_count %d)", name, info.Status, info.ResetCount), nil
	}
	return "", fmt.Errorf("unknown command %q (want add, remove, fault, recover or reset): %w", cmd, syscall.EINVAL)
}
