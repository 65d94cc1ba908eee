package accel

import (
	"strconv"
	"strings"
)

// NodeKind tells the two nodes of a device apart.
type NodeKind uint8

// The two nodes every device exposes.
const (
	// NodeCompute is acN: one client at a time.
	NodeCompute NodeKind = iota
	// NodeMonitor is acN_monitor: shared, read-only queries.
	NodeMonitor
)

// String returns "compute" or "monitor".
func (k NodeKind) String() string {
	if k == NodeMonitor {
		return "monitor"
	}
	return "compute"
}

const (
	computePrefix = "ac"
	monitorSuffix = "_monitor"
)

// ComputeName returns the compute node name of device index i ("acN").
func ComputeName(i int) string { return computePrefix + strconv.Itoa(i) }

// MonitorName returns the monitor node name of device index i ("acN_monitor").
func MonitorName(i int) string { return ComputeName(i) + monitorSuffix }

// ParseNodeName parses "acN" or "acN_monitor". It rejects anything else,
// including leading zeros, so that each index has exactly one name.
func ParseNodeName(name string) (index int, kind NodeKind, ok bool) {
	rest, found := strings.CutPrefix(name, computePrefix)
	if !found {
		return 0, 0, false
	}
	kind = NodeCompute
	if r, isMon := strings.CutSuffix(rest, monitorSuffix); isMon {
		rest, kind = r, NodeMonitor
	}
	if rest == "" || (len(rest) > 1 && rest[0] == '0') {
		return 0, 0, false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, 0, false
		}
	}
	index, err := strconv.Atoi(rest)
	if err != nil {
		return 0, 0, false
	}
	return index, kind, true
}
