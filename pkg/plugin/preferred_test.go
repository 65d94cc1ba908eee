package plugin

import (
	"fmt"
	"slices"
	"testing"
)

// snapshotOf builds a snapshot with devices d0..dN-1, device i on numa[i].
func snapshotOf(numa ...int) *Snapshot {
	s := NewStore(nil)
	var devs []Device
	for i, n := range numa {
		devs = append(devs, dev(fmt.Sprintf("d%d", i), i, n))
	}
	s.Publish("test", devs)
	snap, _ := s.Load()
	return snap
}

func TestPreferCompute(t *testing.T) {
	// d0..d7: NUMA 0 holds d0 d1 d2, NUMA 1 holds d3 d4, NUMA 2 holds d5 d6 d7.
	snap := snapshotOf(0, 0, 0, 1, 1, 2, 2, 2)
	all := []string{"d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"}
	for _, tc := range []struct {
		name      string
		available []string
		must      []string
		size      int
		want      []string
	}{
		{"one device: the smallest node that fits (keep big nodes whole)", all, nil, 1, []string{"d3"}},
		{"two fit on NUMA 1 exactly", all, nil, 2, []string{"d3", "d4"}},
		{"three: the first node of size three", all, nil, 3, []string{"d0", "d1", "d2"}},
		{"four cannot fit one node: largest first, then best fit", all, nil, 4, []string{"d0", "d1", "d2", "d3"}},
		{"must-include pulls its node first", all, []string{"d6"}, 3, []string{"d6", "d5", "d7"}},
		{"must-include node too small: then best fit for the rest", all, []string{"d3"}, 4, []string{"d3", "d4", "d0", "d1"}},
		{"must-include on two nodes", all, []string{"d0", "d5"}, 4, []string{"d0", "d5", "d1", "d2"}},
		{"only some available", []string{"d2", "d4", "d6", "d7"}, nil, 2, []string{"d6", "d7"}},
		{"must-include alone fills the request", all, []string{"d1", "d4"}, 2, []string{"d1", "d4"}},
		{"unknown IDs are used last", []string{"zz", "d0"}, nil, 2, []string{"d0", "zz"}},
		{"more than available: everything", []string{"d3", "d0"}, nil, 5, []string{"d0", "d3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := preferCompute(snap, tc.available, tc.must, tc.size)
			if !slices.Equal(got, tc.want) {
				t.Errorf("preferCompute(avail=%v, must=%v, size=%d) = %v, want %v", tc.available, tc.must, tc.size, got, tc.want)
			}
		})
	}
}

func TestPreferMonitorSpreads(t *testing.T) {
	snap := snapshotOf(0, 0, 1, 1)
	var all []string
	for d := range 4 {
		for k := range 3 {
			all = append(all, MonitorSlotID(fmt.Sprintf("d%d", d), k))
		}
	}
	without := func(ids ...string) []string {
		return slices.DeleteFunc(slices.Clone(all), func(s string) bool { return slices.Contains(ids, s) })
	}
	for _, tc := range []struct {
		name      string
		available []string
		must      []string
		size      int
		want      []string
	}{
		{"four slots: four devices", all, nil, 4, []string{"d0-m0", "d1-m0", "d2-m0", "d3-m0"}},
		{"six slots: every device once, then again", all, nil, 6, []string{"d0-m0", "d1-m0", "d2-m0", "d3-m0", "d0-m1", "d1-m1"}},
		{"least shared device first", without("d0-m0", "d0-m1", "d1-m0"), nil, 2, []string{"d2-m0", "d3-m0"}},
		{"must-include counts as used", all, []string{"d2-m1"}, 3, []string{"d2-m1", "d0-m0", "d1-m0"}},
		{"one device left with slots", []string{"d1-m0", "d1-m2"}, nil, 2, []string{"d1-m0", "d1-m2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := preferMonitor(snap, tc.available, tc.must, tc.size)
			if !slices.Equal(got, tc.want) {
				t.Errorf("preferMonitor(size=%d, must=%v) = %v, want %v", tc.size, tc.must, got, tc.want)
			}
		})
	}
}
