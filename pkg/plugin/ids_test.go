package plugin

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

func TestValidIDAndCleanText(t *testing.T) {
	for id, want := range map[string]bool{
		"SIM-0123456789AB": true, "AN-0042": true, "habanalabs-0000-3b-00.0": true, "a": true,
		"": false, "-x": false, ".x": false, "a b": false, "a/b": false, "a\xffb": false, "é": false,
		strings.Repeat("a", maxIDLen): true, strings.Repeat("a", maxIDLen+1): false,
	} {
		if got := validID(id); got != want {
			t.Errorf("validID(%q) = %v, want %v", id, got, want)
		}
	}
	for in, want := range map[string]string{
		"pci 8086:643e": "pci 8086:643e",
		"bad\xffbyte":   "bad\uFFFDbyte",
		"line\nbreak":   "line?break",
	} {
		if got := cleanText(in); got != want {
			t.Errorf("cleanText(%q) = %q, want %q", in, got, want)
		}
	}
	long := cleanText(strings.Repeat("é", maxTextLen))
	if len(long) > maxTextLen || !utf8.ValidString(long) {
		t.Errorf("cleanText of a long string: %d bytes, valid UTF-8 %v", len(long), utf8.ValidString(long))
	}
	if a, b := hashedID("x\xff"), hashedID("x\xfe"); a == b || !validID(a) || hashedID("x\xff") != a {
		t.Errorf("hashedID not stable, distinct and valid: %q %q", a, b)
	}
}

// logBuffer collects log lines for tests that check warnings.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// A serial once seen on two devices stays disambiguated: the device left
// when the other goes keeps the ID kubelet may have given to a pod.
func TestUniqueIDsStickyAndOrderIndependent(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	a := Device{ID: "S", Name: "ac0", addr: "0000-3b-00.0"}
	b := Device{ID: "S", Name: "ac1", addr: "0000-5e-00.0"}
	addr := func(d Device) string { return d.addr }
	dup := map[string]bool{}
	first := []Device{a, b}
	uniqueIDs(log, first, dup, addr)
	second := []Device{b, a}
	uniqueIDs(log, second, map[string]bool{}, addr)
	for i := range 2 {
		if first[i].ID != second[i].ID || first[i].Name != second[i].Name {
			t.Errorf("order changed the IDs: %+v vs %+v", first, second)
		}
	}
	if first[0].ID != "S-0000-3b-00.0" || first[1].ID != "S-0000-5e-00.0" {
		t.Errorf("IDs = %q, %q", first[0].ID, first[1].ID)
	}
	alone := []Device{first[0]} // b went away
	uniqueIDs(log, alone, dup, addr)
	if alone[0].ID != "S-0000-3b-00.0" {
		t.Errorf("after the twin left, ID = %q; want it kept", alone[0].ID)
	}
	// A rename that collides with another device's own ID gets the name too.
	c := Device{ID: "S-0000-3b-00.0", Name: "ac2"}
	all := []Device{first[0], first[1], c}
	uniqueIDs(log, all, dup, addr)
	ids := map[string]bool{}
	for _, d := range all {
		ids[d.ID] = true
	}
	if len(ids) != 3 {
		t.Errorf("IDs not unique: %+v", all)
	}
}
