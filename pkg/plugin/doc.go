// Package plugin is the Kubernetes device plugin for accel devices.
//
// It is split the way kubelet's own device manager and Intel's plugin
// framework are: discovery (discovery.go) follows the devices and publishes
// immutable, versioned snapshots into a Store; one gRPC server per resource
// (server.go) only publishes snapshots to kubelet and answers Allocate from
// them; the registrar (registration.go) keeps each resource registered with
// kubelet across kubelet restarts. Nothing but discovery changes device
// state, and no stream shares mutable state with another.
//
// Every input is checked before use: RPC requests (validate.go), strings
// and IDs read from sysfs or the device daemon (ids.go). Every access to
// the device daemon, whose FUSE mount can block a syscall for as long as
// the daemon is frozen, goes through a per-daemon gate (gate.go) bounded
// by a timeout, and the plugin never opens a compute node (daemonfs.go).
//
// Two resources are served:
//
//	<prefix>/ac          one whole device (compute + its monitor node), exclusive
//	<prefix>/ac-monitor  one of R shared slots of a device's monitor node
package plugin
