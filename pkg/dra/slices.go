package dra

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	resourceapi "k8s.io/api/resource/v1"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// Device attributes (in the driver's domain, e.g. accel.io/serial) and
// capacities of the published devices.
const (
	AttrSerial    = "serial"    // the device ID, as the device plugin names it
	AttrModel     = "model"     // the device's model
	AttrDriver    = "driver"    // the accel driver (kernel module or simulator driver)
	AttrNUMANode  = "numaNode"  // NUMA node; absent when unknown
	AttrSimulated = "simulated" // served by the simulator
	AttrIndex     = "index"     // the accel index (N of acN / accelN)
	AttrKind      = "kind"      // KindCompute or KindMonitor
	CapMemory     = "memory"    // device memory in bytes (compute devices; absent when unknown)
	CapClients    = "clients"   // shares of a monitor device; each claim takes 1 unless it asks for more
)

// Values of AttrKind: each accel device is published as a compute device
// (exclusive: its compute node) and, where it has one, a monitor device
// (shared: its monitor node).
const (
	KindCompute = "compute"
	KindMonitor = "monitor"
)

// MonitorSuffix turns a device's node name into its monitor device's name:
// ac0 → ac0-monitor.
const MonitorSuffix = "-monitor"

// TaintKey is the key of the taint an unhealthy or removed device gets.
// Its value says why (see taintFor) and its effect is NoSchedule, or
// NoExecute for a device that is gone while a claim holds it.
const TaintKey = "unhealthy"

// Taint values: why a device is tainted.
const (
	TaintInReset       = "InReset"       // a reset is in progress
	TaintMalfunction   = "Malfunction"   // broken until recovered or reset
	TaintNeedsReset    = "NeedsReset"    // unusable until reset
	TaintUnreachable   = "Unreachable"   // its status is fine but it cannot be used (daemon not responding, node missing)
	TaintRemoved       = "Removed"       // the device is gone while a claim holds it
	taintStatusUnknown = "StatusUnknown" // a status this driver does not know
)

// maxDevicesPerSlice is how many devices go in one ResourceSlice: the
// API's limit for slices whose devices may carry taints.
const maxDevicesPerSlice = resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures

// gone is a device a prepared claim holds that discovery no longer
// reports: it stays published, tainted NoExecute, until the claim is
// unprepared, so that its pods are evicted (their device is gone) and no
// new claim gets it.
type gone struct {
	name string // device name in the pool (ac0, ac0-monitor)
	id   string // the device ID it had
	kind string // KindCompute or KindMonitor
}

// taintFor is the taint of a device that discovery reports (nil: none).
func taintFor(d plugin.Device, domain string) *resourceapi.DeviceTaint {
	if d.Healthy {
		return nil
	}
	var value string
	switch d.Status {
	case accel.StatusInReset:
		value = TaintInReset
	case accel.StatusMalfunction:
		value = TaintMalfunction
	case accel.StatusNeedsReset:
		value = TaintNeedsReset
	case accel.StatusRemoved:
		value = TaintRemoved
	case accel.StatusOperational:
		value = TaintUnreachable
	default:
		value = taintStatusUnknown
	}
	return &resourceapi.DeviceTaint{Key: domain + "/" + TaintKey, Value: value, Effect: resourceapi.DeviceTaintEffectNoSchedule}
}

// attrString is a string attribute value, cut to the API's limit at a
// rune boundary.
func attrString(s string) resourceapi.DeviceAttribute {
	if len(s) > resourceapi.DeviceAttributeMaxValueLength {
		s = s[:resourceapi.DeviceAttributeMaxValueLength]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return resourceapi.DeviceAttribute{StringValue: &s}
}

// attributes are the attributes both of a device's entries carry.
func attributes(d plugin.Device, kind string) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	a := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		AttrKind:      attrString(kind),
		AttrSimulated: {BoolValue: ptr.To(d.Simulated)},
		AttrIndex:     {IntValue: ptr.To(int64(d.Index))},
	}
	// Unknown (empty) facts are left out rather than published as "".
	if d.Driver != "" {
		a[AttrDriver] = attrString(d.Driver)
	}
	if d.Model != "" {
		a[AttrModel] = attrString(d.Model)
	}
	if len(d.ID) <= resourceapi.DeviceAttributeMaxValueLength {
		// Longer IDs (a kernel serial of 65-128 characters) cannot be an
		// attribute; the device is still found by its name.
		a[AttrSerial] = attrString(d.ID)
	}
	if d.NUMANode >= 0 {
		a[AttrNUMANode] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.NUMANode))}
		a[deviceattribute.StandardDeviceAttributeNUMANode] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.NUMANode))}
	}
	if d.PCIBusID != "" {
		a[deviceattribute.StandardDeviceAttributePCIBusID] = attrString(d.PCIBusID)
	}
	if d.PCIeRoot != "" {
		a[deviceattribute.StandardDeviceAttributePCIeRoot] = attrString(d.PCIeRoot)
	}
	return a
}

// devices are the published devices of one accel device: its compute
// device and, when it has a monitor node and clients > 0, its monitor
// device.
func devices(d plugin.Device, domain string, clients int) []resourceapi.Device {
	compute := resourceapi.Device{Name: d.Name, Attributes: attributes(d, KindCompute)}
	if d.Memory > 0 && d.Memory <= 1<<62 {
		compute.Capacity = map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			CapMemory: {Value: *apiresource.NewQuantity(int64(d.Memory), apiresource.BinarySI)},
		}
	}
	taint := taintFor(d, domain)
	if taint != nil {
		compute.Taints = []resourceapi.DeviceTaint{*taint}
	}
	out := []resourceapi.Device{compute}
	if !d.HasMonitor() || clients <= 0 {
		return out
	}
	monitor := resourceapi.Device{
		Name:                     d.Name + MonitorSuffix,
		Attributes:               attributes(d, KindMonitor),
		AllowMultipleAllocations: ptr.To(true),
		Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
			CapClients: {
				Value: *apiresource.NewQuantity(int64(clients), apiresource.DecimalSI),
				RequestPolicy: &resourceapi.CapacityRequestPolicy{
					Default:    apiresource.NewQuantity(1, apiresource.DecimalSI),
					ValidRange: &resourceapi.CapacityRequestPolicyRange{Min: apiresource.NewQuantity(1, apiresource.DecimalSI)},
				},
			},
		},
	}
	if taint != nil {
		monitor.Taints = []resourceapi.DeviceTaint{*taint}
	}
	return append(out, monitor)
}

// goneDevice is the published entry of a device that is gone while a
// claim holds it: only its ID and kind are known.
func goneDevice(g gone, domain string) resourceapi.Device {
	a := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{AttrKind: attrString(g.kind)}
	if len(g.id) <= resourceapi.DeviceAttributeMaxValueLength {
		a[AttrSerial] = attrString(g.id)
	}
	return resourceapi.Device{
		Name:       g.name,
		Attributes: a,
		Taints:     []resourceapi.DeviceTaint{{Key: domain + "/" + TaintKey, Value: TaintRemoved, Effect: resourceapi.DeviceTaintEffectNoExecute}},
	}
}

// entry is one published device and its health.
type entry struct {
	dev     resourceapi.Device
	healthy bool
	message string // why it is unhealthy
}

// entries are the node's published devices: every device of snap (see
// devices), then the gone devices (held, sorted by name), in that order (source, index), so that
// a change to one device rewrites one slice. A name is published once: a
// gone device whose node name another device now has is not.
func entries(snap *plugin.Snapshot, held []gone, domain string, clients int) []entry {
	var out []entry
	names := map[string]bool{}
	for _, d := range snap.Devices {
		for _, dev := range devices(d, domain, clients) {
			if names[dev.Name] {
				continue // two sources with one node name: the store keeps IDs unique, names are ours to keep so
			}
			names[dev.Name] = true
			out = append(out, entry{dev: dev, healthy: d.Healthy, message: d.Reason})
		}
	}
	for _, g := range held { // sorted by name (heldDevices)
		if !names[g.name] {
			names[g.name] = true
			out = append(out, entry{dev: goneDevice(g, domain), message: "device removed (it was " + g.id + ")"})
		}
	}
	return out
}

// resources renders the node's pool from its entries, in slices of at
// most maxDevicesPerSlice.
func resources(es []entry, pool string) resourceslice.DriverResources {
	p := resourceslice.Pool{}
	for chunk := range slices.Chunk(es, maxDevicesPerSlice) {
		s := resourceslice.Slice{Devices: make([]resourceapi.Device, 0, len(chunk))}
		for _, e := range chunk {
			s.Devices = append(s.Devices, e.dev)
		}
		p.Slices = append(p.Slices, s)
	}
	if len(p.Slices) == 0 {
		p.Slices = []resourceslice.Slice{{}} // an empty pool: the node has no devices now
	}
	return resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{pool: p}}
}

// parseDeviceName parses a published device name: the accel node name and
// whether it is the monitor device.
func parseDeviceName(name string) (node string, monitor bool) {
	if n, ok := strings.CutSuffix(name, MonitorSuffix); ok {
		return n, true
	}
	return name, false
}

// findDevice returns the device of snap whose published name is name.
func findDevice(snap *plugin.Snapshot, name string) (plugin.Device, bool, error) {
	node, monitor := parseDeviceName(name)
	for _, d := range snap.Devices {
		if d.Name != node {
			continue
		}
		if monitor && !d.HasMonitor() {
			return plugin.Device{}, false, fmt.Errorf("device %s has no monitor node", node)
		}
		return d, monitor, nil
	}
	return plugin.Device{}, monitor, errNotFound
}
