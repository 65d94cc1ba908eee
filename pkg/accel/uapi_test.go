package accel

import (
	"encoding/binary"
	"strings"
	"testing"
	"unicode/utf8"
)

// Regression (issue 10, item 10b): a string too long for its field is cut
// at a rune boundary. On 12137fa the cut fell inside a UTF-8 sequence and
// the field decoded as invalid UTF-8.
func TestPutStringCutsAtRuneBoundary(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		size int
		want string
	}{
		{"fits", "ac0", 32, "ac0"},
		{"exactly size-1", strings.Repeat("a", 31), 32, strings.Repeat("a", 31)},
		{"ASCII cut", strings.Repeat("a", 40), 32, strings.Repeat("a", 31)},
		{"2-byte rune across the cut", strings.Repeat("a", 30) + "é", 32, strings.Repeat("a", 30)},
		{"2-byte rune just fits", strings.Repeat("a", 29) + "é", 32, strings.Repeat("a", 29) + "é"},
		{"3-byte rune across the cut", strings.Repeat("a", 29) + "€x", 32, strings.Repeat("a", 29)},
		{"4-byte rune across the cut", strings.Repeat("a", 28) + "🚀", 32, strings.Repeat("a", 28)},
		{"4-byte runes only", strings.Repeat("🚀", 20), 64, strings.Repeat("🚀", 15)},
		{"invalid UTF-8 is cut by bytes", strings.Repeat("\x80", 40), 32, strings.Repeat("\x80", 31)},
		{"truncated sequence before the cut", strings.Repeat("a", 29) + "\xe2\x82" + "bcd", 32, strings.Repeat("a", 29) + "\xe2\x82"},
	} {
		// Through the encoder: the name field is 32 bytes, model 64.
		in := Info{Name: tc.in}
		off := 56
		if tc.size == 64 {
			in, off = Info{Model: tc.in}, 120
		}
		b, _ := in.MarshalBinary()
		f := b[off : off+tc.size]
		got, _, _ := strings.Cut(string(f), "\x00")
		if f[tc.size-1] != 0 || got != tc.want || strings.Trim(string(f[len(got):]), "\x00") != "" {
			t.Errorf("%s: field holds %q, want %q, NUL-padded", tc.name, f, tc.want)
		}
		if utf8.ValidString(tc.in) && !utf8.ValidString(got) {
			t.Errorf("%s: valid UTF-8 %q became invalid %q", tc.name, tc.in, got)
		}
	}
}

// Regression (issue 10, item 10c): a string field without its NUL and an
// unknown status are refused with errors naming them. On 12137fa both were
// accepted (the status printed as "unknown(7)").
func TestUnmarshalRejectsMalformedInfo(t *testing.T) {
	good := Info{Name: "ac3", Index: 3, Serial: "SN-1", Driver: "fakedev", Model: "Simulated Accel SA-1",
		Status: StatusRemoved, ComputeInUse: true, HolderPID: 77, MonitorClients: 2, MemoryTotal: 16 << 30, NUMANode: -1}
	enc := func() []byte { b, _ := good.MarshalBinary(); return b }
	for _, tc := range []struct {
		name   string
		mangle func(b []byte)
		want   string
	}{
		{"name without NUL", func(b []byte) { copy(b[56:88], strings.Repeat("n", 32)) }, "name field (offset 56): no terminating NUL within its 32 bytes"},
		{"driver without NUL", func(b []byte) { copy(b[88:120], strings.Repeat("d", 32)) }, "driver field (offset 88)"},
		{"model without NUL", func(b []byte) { copy(b[120:184], strings.Repeat("m", 64)) }, "model field (offset 120)"},
		{"serial without NUL", func(b []byte) { copy(b[184:248], strings.Repeat("s", 64)) }, "serial field (offset 184)"},
		{"status 5", func(b []byte) { binary.LittleEndian.PutUint32(b[12:], 5) }, "unknown status 5"},
		{"status 0xffffffff", func(b []byte) { binary.LittleEndian.PutUint32(b[12:], 0xffffffff) }, "unknown status 4294967295"},
	} {
		b := enc()
		tc.mangle(b)
		out := Info{Name: "untouched"}
		err := out.UnmarshalBinary(b)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
		if out.Name != "untouched" {
			t.Errorf("%s: a refused buffer changed the Info: %+v", tc.name, out)
		}
	}
	// What the daemon writes is still accepted, every status and
	// strings of every length up to the field size.
	for s := StatusOperational; s <= StatusRemoved; s++ {
		in := good
		in.Status = s
		in.Model = strings.Repeat("M", 100) // cut to 63 bytes
		b, _ := in.MarshalBinary()
		var out Info
		if err := out.UnmarshalBinary(b); err != nil || out.Status != s || out.Model != strings.Repeat("M", 63) {
			t.Errorf("status %v: %+v, %v", s, out, err)
		}
	}
}
