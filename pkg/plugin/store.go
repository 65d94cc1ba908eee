package plugin

import (
	"log/slog"
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
//
// Device IDs are unique across sources: when two sources report the same
// ID (two simulators started with the same seed, a device seen both by
// its daemon and in sysfs), the first source by name keeps it, and the
// other device is not advertised; each such device is logged once, when it
// becomes shadowed.
type Store struct {
	mu       sync.Mutex
	log      *slog.Logger
	snap     *Snapshot
	sources  map[string][]Device
	shadowed map[shadowKey]bool // each device not advertised for a taken ID
	changed  chan struct{}
}

// shadowKey names a device by source, node name and ID.
type shadowKey struct{ source, name, id string }

// NewStore returns a store at version 0 with no devices, logging to log
// (nil: nowhere).
func NewStore(log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{
		log:      log,
		snap:     &Snapshot{byID: map[string]int{}},
		sources:  map[string][]Device{},
		shadowed: map[shadowKey]bool{},
		changed:  make(chan struct{}),
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
	shadowed := map[shadowKey]bool{}
	for _, name := range names {
		for _, d := range s.sources[name] {
			if i, dup := next.byID[d.ID]; dup {
				// One identity, one device: the first source wins.
				key := shadowKey{d.Source, d.Name, d.ID}
				shadowed[key] = true
				if !s.shadowed[key] {
					kept := next.Devices[i]
					s.log.Warn("device not advertised: another source reports the same device ID",
						"id", d.ID, "device", d.Name, "source", d.Source, "advertised_device", kept.Name, "advertised_source", kept.Source)
				}
				continue
			}
			next.byID[d.ID] = len(next.Devices)
			next.Devices = append(next.Devices, d)
		}
	}
	for key := range s.shadowed {
		if shadowed[key] {
			continue
		}
		if i, ok := next.byID[key.id]; ok && next.Devices[i].Source == key.source && next.Devices[i].Name == key.name {
			s.log.Info("device advertised: the other source's device with its ID is gone", "id", key.id, "device", key.name, "source", key.source)
		}
	}
	s.shadowed = shadowed
	s.snap = next
	close(s.changed)
	s.changed = make(chan struct{})
	return next.Version
}
