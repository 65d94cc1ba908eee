package plugin

import (
	"slices"
	"sync"
)

// Snapshot is the set of known devices at one version. A published snapshot
// is never modified.
type Snapshot struct {
	// Version grows by one with every change; 0 means discovery has not
	// reported yet.
	Version uint64
	// Devices is sorted by source, then index.
	Devices []Device
	byID    map[string]int
}

// Device returns the device with the given ID.
func (s *Snapshot) Device(id string) (Device, bool) {
	i, ok := s.byID[id]
	if !ok {
		return Device{}, false
	}
	return s.Devices[i], true
}

// Store holds the current snapshot and wakes watchers when it changes. A
// publisher never waits for a watcher: it swaps the snapshot and closes a
// channel, so a slow kubelet stream cannot block discovery, and a watcher
// that wakes late simply reads the newest snapshot (changes coalesce, none
// is lost).
type Store struct {
	mu      sync.Mutex
	snap    *Snapshot
	sources map[string][]Device
	changed chan struct{}
}

// NewStore returns a store at version 0 with no devices.
func NewStore() *Store {
	return &Store{
		snap:    &Snapshot{byID: map[string]int{}},
		sources: map[string][]Device{},
		changed: make(chan struct{}),
	}
}

// Load returns the current snapshot and a channel that is closed when a
// newer one is published.
func (s *Store) Load() (*Snapshot, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap, s.changed
}

// Sources is the number of sources that have published.
func (s *Store) Sources() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sources)
}

// Publish replaces the devices of one source. It returns the new snapshot
// version, and makes a new version only when something changed (or on the
// first publish, so watchers learn that discovery has reported).
func (s *Store) Publish(source string, devices []Device) uint64 {
	devices = slices.Clone(devices)
	slices.SortFunc(devices, func(a, b Device) int { return a.Index - b.Index })

	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.sources[source]
	if had && slices.Equal(old, devices) && s.snap.Version > 0 {
		return s.snap.Version
	}
	s.sources[source] = devices

	names := make([]string, 0, len(s.sources))
	for name := range s.sources {
		names = append(names, name)
	}
	slices.Sort(names)
	next := &Snapshot{Version: s.snap.Version + 1, byID: map[string]int{}}
	for _, name := range names {
		for _, d := range s.sources[name] {
			if _, dup := next.byID[d.ID]; dup {
				continue // one identity, one device: the first source wins
			}
			next.byID[d.ID] = len(next.Devices)
			next.Devices = append(next.Devices, d)
		}
	}
	s.snap = next
	close(s.changed)
	s.changed = make(chan struct{})
	return next.Version
}
