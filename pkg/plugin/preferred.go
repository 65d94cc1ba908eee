package plugin

import (
	"cmp"
	"container/heap"
	"slices"
)

// preferCompute picks size devices from available, including mustInclude,
// on as few NUMA nodes as possible. NUMA nodes already used by mustInclude
// are filled first; then, if one node can hold the rest, the smallest such
// node is used (leaving larger ones whole for later requests); otherwise
// the largest nodes are used until the request is met. Within a node,
// devices go in index order. Unknown IDs are kept last so the answer is
// still valid if kubelet knows more than we do.
func preferCompute(snap *Snapshot, available, mustInclude []string, size int) []string {
	chosen, rest := startWith(available, mustInclude, size)
	if len(chosen) >= size {
		return chosen[:size]
	}
	numaOf := func(id string) int {
		if d, ok := snap.Device(id); ok {
			return d.NUMANode
		}
		return -2 // unknown device: its own group, used last
	}
	groups := map[int][]string{}
	for _, id := range rest {
		groups[numaOf(id)] = append(groups[numaOf(id)], id)
	}
	for n := range groups {
		slices.SortFunc(groups[n], func(a, b string) int { return cmp.Compare(indexOf(snap, a), indexOf(snap, b)) })
	}
	take := func(n int) {
		for _, id := range groups[n] {
			if len(chosen) == size {
				break
			}
			chosen = append(chosen, id)
		}
		delete(groups, n)
	}
	// NUMA nodes that mustInclude already uses come first.
	for _, id := range chosen {
		if len(chosen) == size {
			break
		}
		take(numaOf(id))
	}
	for len(chosen) < size && len(groups) > 0 {
		need := size - len(chosen)
		nodes := make([]int, 0, len(groups))
		for n := range groups {
			nodes = append(nodes, n)
		}
		// Best fit: the smallest node that holds the rest; else the largest.
		slices.SortFunc(nodes, func(a, b int) int {
			if (a == -2) != (b == -2) {
				if a == -2 {
					return 1 // unknown devices last
				}
				return -1
			}
			fa, fb := len(groups[a]) >= need, len(groups[b]) >= need
			switch {
			case fa && fb:
				return cmp.Or(cmp.Compare(len(groups[a]), len(groups[b])), cmp.Compare(a, b))
			case fa != fb:
				if fa {
					return -1
				}
				return 1
			default:
				return cmp.Or(cmp.Compare(len(groups[b]), len(groups[a])), cmp.Compare(a, b))
			}
		})
		take(nodes[0])
	}
	return chosen
}

// preferMonitor picks size monitor slots from available, including
// mustInclude, spread over as many distinct devices as possible: each
// round takes one slot from the device used least by this request so far,
// preferring devices with the most free slots (the least shared), then
// lower indices. A heap keeps each round O(log devices), so a request with
// many IDs costs O(n log n).
func preferMonitor(snap *Snapshot, available, mustInclude []string, size int) []string {
	chosen, rest := startWith(available, mustInclude, size)
	if len(chosen) >= size {
		return chosen[:size]
	}
	used := map[string]int{} // device ID → slots chosen in this request
	for _, id := range chosen {
		dev, _ := parseMonitorSlotID(id)
		used[dev]++
	}
	byDev := map[string]*slotDev{}
	h := &slotHeap{}
	for _, id := range rest {
		dev, ok := parseMonitorSlotID(id)
		if !ok {
			dev = id
		}
		d := byDev[dev]
		if d == nil {
			d = &slotDev{id: dev, index: indexOf(snap, dev), used: used[dev]}
			byDev[dev] = d
			h.devs = append(h.devs, d)
		}
		d.free = append(d.free, id)
	}
	heap.Init(h)
	for len(chosen) < size && h.Len() > 0 {
		d := h.devs[0]
		chosen = append(chosen, d.free[0])
		d.free = d.free[1:]
		d.used++
		if len(d.free) == 0 {
			heap.Pop(h)
		} else {
			heap.Fix(h, 0)
		}
	}
	return chosen
}

// slotDev is one device's free slots while preferMonitor picks.
type slotDev struct {
	id    string
	index int
	used  int
	free  []string
}

// slotHeap orders devices by (used, most free, index, ID).
type slotHeap struct{ devs []*slotDev }

func (h *slotHeap) Len() int { return len(h.devs) }
func (h *slotHeap) Less(i, j int) bool {
	a, b := h.devs[i], h.devs[j]
	return cmp.Or(
		cmp.Compare(a.used, b.used),
		cmp.Compare(len(b.free), len(a.free)),
		cmp.Compare(a.index, b.index),
		cmp.Compare(a.id, b.id)) < 0
}
func (h *slotHeap) Swap(i, j int) { h.devs[i], h.devs[j] = h.devs[j], h.devs[i] }
func (h *slotHeap) Push(x any)    { h.devs = append(h.devs, x.(*slotDev)) }
func (h *slotHeap) Pop() any {
	d := h.devs[len(h.devs)-1]
	h.devs = h.devs[:len(h.devs)-1]
	return d
}

// startWith returns mustInclude and the other available IDs. The request
// was checked first (checkPreferred): no duplicates, every must-include ID
// available, size within bounds.
func startWith(available, mustInclude []string, size int) (chosen, rest []string) {
	must := map[string]bool{}
	for _, id := range mustInclude {
		if !must[id] {
			must[id] = true
			chosen = append(chosen, id)
		}
	}
	for _, id := range available {
		if !must[id] {
			rest = append(rest, id)
			must[id] = true
		}
	}
	return chosen, rest
}

// indexOf is the device index of a device or monitor slot ID, for ordering.
func indexOf(snap *Snapshot, id string) int {
	if d, ok := snap.Device(id); ok {
		return d.Index
	}
	if dev, ok := parseMonitorSlotID(id); ok {
		if d, ok := snap.Device(dev); ok {
			return d.Index
		}
	}
	return 1 << 30
}
