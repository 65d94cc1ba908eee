package plugin

import (
	"cmp"
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
// round takes one slot from every device not yet used by this request,
// preferring devices with the most free slots (the least shared).
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
	free := map[string][]string{} // device ID → its available slots
	var devs []string
	for _, id := range rest {
		dev, ok := parseMonitorSlotID(id)
		if !ok {
			dev = id
		}
		if _, seen := free[dev]; !seen {
			devs = append(devs, dev)
		}
		free[dev] = append(free[dev], id)
	}
	for len(chosen) < size {
		slices.SortFunc(devs, func(a, b string) int {
			return cmp.Or(
				cmp.Compare(used[a], used[b]),
				cmp.Compare(len(free[b]), len(free[a])),
				cmp.Compare(indexOf(snap, a), indexOf(snap, b)),
				cmp.Compare(a, b))
		})
		if len(devs) == 0 || len(free[devs[0]]) == 0 {
			break
		}
		dev := devs[0]
		chosen = append(chosen, free[dev][0])
		free[dev] = free[dev][1:]
		used[dev]++
		if len(free[dev]) == 0 {
			devs = devs[1:]
		}
	}
	return chosen
}

// startWith returns mustInclude (kubelet guarantees they are available) and
// the other available IDs.
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
