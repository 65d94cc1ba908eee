// Package accel is the accel core: the part every accelerator driver
// registers with. It models the 2022 Linux "accel" subsystem proposal.
//
// The core owns what is common to all devices so that drivers only describe
// their hardware:
//
//   - the registry (registry.go) hands out device indices and node names
//     (acN for compute, acN_monitor for monitoring) and reuses an index only
//     after the previous device with it is fully gone;
//   - open/close rules (file.go): one client at a time on the compute node;
//     on the monitor node up to Options.MonitorOpensPerProcess open files
//     per process and Options.MonitorOpensPerDevice in all (EMFILE past
//     them), so no client can grow the daemon's memory without bound;
//   - the common info query and attributes (device.go): status, reset count;
//   - events (events.go): device added, removed, status changed, delivered in
//     order to any number of waiting consumers;
//   - the memory manager (mem.go): buffers of device memory with handles and
//     page-aligned places in the compute node's mapping space, memory_used,
//     and a budget for all devices together;
//   - the job engine (jobs.go): device work drivers submit, run in order,
//     with the busy time and job count every device reports;
//   - the uAPI (uapi.go): ioctl numbers and the info struct layout.
//
// Drivers plug in through the narrow Driver interface (driver.go). How nodes
// become files is not this package's business: package devfs exposes them
// through FUSE.
package accel
