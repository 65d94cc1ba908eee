package plugin

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxIDLen bounds a device identity taken from a device (a serial).
const maxIDLen = 128

// validID reports whether s can be a device ID as it is. A device ID goes
// to kubelet (protobuf strings must be UTF-8; kubelet keeps IDs in its
// checkpoint and in the pod-resources API), into Prometheus labels, logs and
// the monitor slot IDs (ID-mK), so it is held to a conservative set:
// 1 to maxIDLen characters of A-Z a-z 0-9 '.' '_' '-', starting with a
// letter or digit. Real serials (habanalabs' serial_number) and our
// simulated ones (SIM-…) fit.
func validID(s string) bool {
	if s == "" || len(s) > maxIDLen || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !idByte(s[i]) {
			return false
		}
	}
	return true
}

// alnum reports whether c is an ASCII letter or digit.
func alnum(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' }

// idByte reports whether c may stand in a device ID after its first byte.
func idByte(c byte) bool { return alnum(c) || c == '.' || c == '_' || c == '-' }

// idPart makes s usable inside a device ID: every character validID does
// not allow becomes '_'. Different inputs may map to the same part; the
// callers' IDs are made unique afterwards (uniqueIDs).
func idPart(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < maxIDLen; i++ {
		if c := s[i]; idByte(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// hashedID is the ID of a device whose serial cannot be an ID: stable for
// the same serial bytes (so across restarts), and different for different
// ones.
func hashedID(serial string) string {
	sum := sha256.Sum256([]byte(serial))
	return "serial-" + hex.EncodeToString(sum[:8])
}

// maxNUMANode is the highest NUMA node ID believed (Linux's MAX_NUMNODES
// is at most 1024); anything else is reported as unknown.
const maxNUMANode = 1023

// maxTextLen bounds a descriptive string read from a device (model,
// driver, a reason).
const maxTextLen = 256

// cleanText makes a string read from a device or the system safe for logs,
// gRPC messages, node labels and metrics: valid UTF-8 (invalid bytes become
// U+FFFD), no control characters, at most maxTextLen bytes (cut on a rune
// boundary).
func cleanText(s string) string {
	if len(s) <= maxTextLen && utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
	if len(s) > maxTextLen {
		cut := maxTextLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// uniqueIDs gives every device of one source its own ID. Devices that
// share an ID (two devices reporting the same serial: a firmware or
// manufacturing fault) are all renamed ID-suffix(d), so each is still
// advertised, whatever order they were found in; a warning names them all.
// Once an ID was seen shared, it stays disambiguated for the life of the
// process (dup remembers it), so the device left behind when the other
// goes away keeps the ID kubelet may have given to a pod. A rename that
// still collides gets the node name too.
func uniqueIDs(log *slog.Logger, devs []Device, dup map[string]bool, suffix func(Device) string) {
	byID := map[string][]int{}
	for i := range devs {
		if devs[i].baseID == "" {
			devs[i].baseID = devs[i].ID
		}
		devs[i].ID = devs[i].baseID
		byID[devs[i].baseID] = append(byID[devs[i].baseID], i)
	}
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		group := byID[id]
		if len(group) < 2 && !dup[id] {
			continue
		}
		slices.SortFunc(group, func(a, b int) int { return cmp.Compare(devs[a].Name, devs[b].Name) })
		var names []string
		for _, i := range group {
			devs[i].ID = id + "-" + idPart(suffix(devs[i]))
			names = append(names, fmt.Sprintf("%s as %s", devs[i].Name, devs[i].ID))
		}
		if len(group) > 1 && !dup[id] {
			log.Warn("devices report the same serial; advertising each under an ID that adds its address",
				"serial", id, "devices", strings.Join(names, ", "))
		}
		dup[id] = true
	}
	// A renamed ID can still equal another device's (pathological serials).
	slices.SortFunc(devs, func(a, b Device) int { return cmp.Compare(a.Name, b.Name) })
	seen := map[string]bool{}
	for i := range devs {
		if seen[devs[i].ID] {
			old := devs[i].ID
			devs[i].ID += "-" + idPart(devs[i].Name)
			log.Warn("device ID still not unique; adding the node name", "id", old, "name", devs[i].Name, "new_id", devs[i].ID)
		}
		seen[devs[i].ID] = true
	}
}
