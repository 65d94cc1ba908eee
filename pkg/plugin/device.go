package plugin

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Device is what the plugin knows about one device at one moment. It is a
// plain value (comparable with ==), so snapshots diff by value.
type Device struct {
	// ID is the device's one identity, used for kubelet device IDs, logs and
	// events alike: its serial, which the driver keeps stable across
	// restarts and never gives to another device.
	ID       string
	Name     string // node name, e.g. "ac0"
	Index    int
	Driver   string
	Model    string
	NUMANode int // -1 when unknown
	Status   accel.Status
	// Healthy says whether a container may be given the device now.
	Healthy bool
	// Reason says why the device is unhealthy ("" when healthy).
	Reason string
	// Source names the discovery source that found the device.
	Source string
	// Simulated marks a device served by the simulator rather than a
	// kernel driver (the ac.simulated node label).
	Simulated bool
	// Memory is the device's memory in bytes (0: unknown).
	Memory uint64
	// PCIBusID is the PCI address of a PCI device ("0000:3b:00.0"), and
	// PCIeRoot its PCIe root complex ("pci0000:3a"); both empty where the
	// device is not on PCI or they are unknown.
	PCIBusID, PCIeRoot string
	// Compute is what a container given the device exclusively gets, and
	// Monitor what a container sharing it for monitoring gets (empty: the
	// device has no monitor node). Discovery decides both, with paths as
	// kubelet and the container runtime see them; every front-end renders
	// them as they are.
	Compute, Monitor Edits

	// baseID is the identity read from the device before uniqueIDs told
	// devices sharing it apart (ID is then baseID-address).
	baseID string
	// addr is the device's bus address (a PCI address, a platform device's
	// name), where known.
	addr string
	// sysDevice is a kernel device's parent device directory in sysfs,
	// where its driver's attributes are ("" for others).
	sysDevice string
}

// HasMonitor reports whether the device has a monitor node (and so offers
// monitor slots).
func (d Device) HasMonitor() bool { return !d.Monitor.Empty() }

// edits returns the device's edits for one use.
func (d Device) edits(kind nodeKind) Edits {
	if kind == monitorNode {
		return d.Monitor
	}
	return d.Compute
}

// health derives Healthy and Reason from the device's status: only an
// operational device can be handed out. Health follows status both ways, so
// a device that is reset and operational again is healthy again.
func (d *Device) health() {
	switch d.Status {
	case accel.StatusOperational:
		d.Healthy, d.Reason = true, ""
	default:
		d.Healthy, d.Reason = false, "status "+d.Status.String()
	}
}

// monitorSlotSep separates a device ID from a monitor slot number.
const monitorSlotSep = "-m"

// MonitorSlotID returns the kubelet device ID of monitor slot k of the
// device with ID id.
func MonitorSlotID(id string, k int) string { return fmt.Sprintf("%s%s%d", id, monitorSlotSep, k) }

// parseMonitorSlotID splits a monitor slot ID into the device ID and slot.
func parseMonitorSlotID(slotID string) (id string, ok bool) {
	i := strings.LastIndex(slotID, monitorSlotSep)
	if i <= 0 {
		return "", false
	}
	for _, c := range slotID[i+len(monitorSlotSep):] {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	if i+len(monitorSlotSep) == len(slotID) {
		return "", false
	}
	return slotID[:i], true
}

// deviceSet is a discovery source's devices by node name. Every arrival,
// departure and change of health is logged here, with the device ID and
// the reason, whichever source found it.
type deviceSet map[string]Device

// put stores d.
func (s deviceSet) put(log *slog.Logger, d Device) {
	d.Reason = cleanText(d.Reason)
	old, ok := s[d.Name]
	s[d.Name] = d
	switch {
	case !ok || old.ID != d.ID:
		log.Info("device found", "id", d.ID, "name", d.Name, "driver", d.Driver, "model", d.Model,
			"numa", d.NUMANode, "healthy", d.Healthy, "reason", d.Reason)
	case old.Healthy != d.Healthy || old.Reason != d.Reason:
		log.Info("device health changed", "id", d.ID, "name", d.Name, "healthy", d.Healthy,
			"status", d.Status.String(), "reason", d.Reason)
	}
}

// remove forgets the device with node name name, if known.
func (s deviceSet) remove(log *slog.Logger, name string) {
	if old, ok := s[name]; ok {
		delete(s, name)
		log.Info("device removed", "id", old.ID, "name", name)
	}
}

// keepOnly removes every device whose name is not in seen.
func (s deviceSet) keepOnly(log *slog.Logger, seen map[string]bool) {
	for name := range s {
		if !seen[name] {
			s.remove(log, name)
		}
	}
}

// list returns the devices, in no particular order.
func (s deviceSet) list() []Device {
	out := make([]Device, 0, len(s))
	for _, d := range s {
		out = append(out, d)
	}
	return out
}
