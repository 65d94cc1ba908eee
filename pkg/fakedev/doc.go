// Package fakedev simulates accelerators that register with the accel core
// like real drivers do, so the whole stack runs on machines without
// accelerator hardware. It has two drivers that share one core: fakedev, a
// generic accelerator (uapi.go, generic.go), and fakenpu, a DNN engine
// (npu.go), each with its own commands; their buffers and jobs are the
// core's memory manager's and job engine's.
//
// A simulated device has a deterministic identity (its serial derives from
// a seed and its slot number, so it is stable across restarts), a model
// name, memory that compute clients allocate through driver-specific
// commands, a NUMA node, and the status transitions of real hardware:
// injected faults (malfunction, needs-reset, and corrupt: silent data
// corruption that leaves the status alone), resets that pass through
// in_reset and count, and hot-plug and hot-unplug. Errnos follow the
// habanalabs driver: see package accel's uapi.go.
package fakedev
