package devfs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// mappings keeps clients' mappings of compute nodes coherent with device
// memory: it is the registry's accel.MappingSyncer. A mapping of a compute
// node lives in the kernel's page cache of the node's inode, which the
// daemon cannot see into; what it can do is ask the kernel to invalidate a
// range (FUSE_NOTIFY_INVAL_INODE). The kernel then writes the range's
// dirty pages back first (WRITE requests, served meanwhile by other
// goroutines) and drops the pages from the cache and from every mapping,
// so that the next access reads device memory again. This is measured to
// work from inside an ioctl handler on Linux 6.18, which is how a job's
// submit captures the client's writes without an msync.
type mappings struct {
	mu     sync.Mutex
	inodes map[*accel.Device]*fs.Inode // compute node of each device with an open or recent client
}

func newMappings() *mappings { return &mappings{inodes: make(map[*accel.Device]*fs.Inode)} }

// track records the inode of d's compute node when a client opens it.
func (m *mappings) track(d *accel.Device, ino *fs.Inode) {
	m.mu.Lock()
	m.inodes[d] = ino
	m.mu.Unlock()
}

// Sync implements accel.MappingSyncer.
func (m *mappings) Sync(d *accel.Device, off, size uint64) error {
	m.mu.Lock()
	ino := m.inodes[d]
	m.mu.Unlock()
	if ino == nil {
		return nil // never opened through this mount: nothing is cached
	}
	return invalidate(ino, int64(off), int64(size))
}

// released drops what the kernel caches of d's compute node once its
// client is gone (nothing can be dirty any more: the kernel wrote the
// pages back before the release), and forgets a removed device.
func (m *mappings) released(d *accel.Device) {
	m.mu.Lock()
	ino := m.inodes[d]
	if d.Status() == accel.StatusRemoved {
		delete(m.inodes, d)
	}
	m.mu.Unlock()
	if ino != nil {
		_ = invalidate(ino, 0, 0) // 0: to the end
	}
}

// invalidate asks the kernel to write back and drop [off, off+size) of
// ino's page cache. ENOENT means the kernel holds no such inode, so it
// caches nothing of it.
func invalidate(ino *fs.Inode, off, size int64) error {
	if errno := ino.NotifyContent(off, size); errno != 0 && errno != syscall.ENOENT {
		return errno
	}
	return nil
}

// forget drops removed devices that no client holds any more.
func (m *mappings) forget() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for d := range m.inodes {
		if d.Status() == accel.StatusRemoved && d.Holder() == nil {
			delete(m.inodes, d)
		}
	}
}
