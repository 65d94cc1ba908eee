// Package dra is the Dynamic Resource Allocation (resource.k8s.io/v1)
// front-end of the plugin: the same devices as the device-plugin API, with
// the same IDs and the same container edits, published as ResourceSlices
// and handed to containers through per-claim CDI specs. It is built on
// k8s.io/dynamic-resource-allocation's kubeletplugin helper (registration,
// the DRA and health gRPC services, the ResourceSlice controller).
//
// Devices. Every accel device is a compute device named after its node
// (ac0, accel0): exclusive, it gives the container what the device
// plugin's <prefix>/ac gives. A device with a monitor node is also a
// monitor device (ac0-monitor) that allows multiple allocations and has a
// consumable "clients" capacity (MonitorClients, default 1 per claim): it
// gives what <prefix>/ac-monitor gives. A claim with admin access to a
// compute device gets that device's monitor node only, never its compute
// node. Attributes: serial (the device-plugin ID), model, driver,
// numaNode, simulated, index, kind, and the standard
// resource.kubernetes.io/numaNode, pciBusID and pcieRoot where known;
// capacity memory where known.
//
// Health, both ways. A device that is not usable gets the taint
// <prefix>/unhealthy with effect NoSchedule (value InReset, Malfunction,
// NeedsReset, Removed or Unreachable); the taint goes when the device is
// usable again. A device that is gone while a prepared claim holds it
// stays published with effect NoExecute (value Removed), so that its pods
// are evicted, until the claim is unprepared. The same health, with its
// reason, streams to kubelet for the pod status.
//
// Claims. Prepare is idempotent and refuses a device that is absent,
// unhealthy, or held exclusively by another claim; every prepared claim
// is in a checkpoint (with a checksum) in the plugin's data directory, and
// its CDI spec (<prefix>/claim=<UID>-<request>) is written again from it
// at start, so a reboot (which empties /var/run/cdi) or a restart leaves
// no prepared claim without its spec.
package dra
