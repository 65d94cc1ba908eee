package devfs

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzControlLines: however the stream written to sys/control is cut into
// write requests, the assembler yields exactly the stream's lines — blank
// ones skipped, each trimmed, every line over MaxControlLine refused whole
// with its true length — and never keeps more than MaxControlLine bytes.
func FuzzControlLines(f *testing.F) {
	f.Add([]byte("add\nfault ac1\n\nremove ac0"), []byte{3, 1, 9}, uint16(0), uint16(0))
	f.Add([]byte("reset ac0\r\n  \n"), []byte{}, uint16(0), uint16(0))
	f.Add([]byte("a\nb\n"), []byte{1, 1, 1, 1}, uint16(MaxControlLine+1), uint16(2))
	f.Add([]byte("x\n"), []byte{200, 200, 200}, uint16(MaxControlLine), uint16(0))
	f.Add([]byte("\n\n\n"), []byte{0}, uint16(3*MaxControlLine), uint16(1))
	f.Fuzz(func(t *testing.T, data, cuts []byte, pad, at uint16) {
		// A long run of 'x' at a chosen offset makes lines around the limit.
		pad %= 3*MaxControlLine + 2
		pos := int(at) % (len(data) + 1)
		stream := append(append(append([]byte(nil), data[:pos]...), bytes.Repeat([]byte{'x'}, int(pad))...), data[pos:]...)

		var want []controlLine
		segs := strings.Split(string(stream), "\n")
		for i, s := range segs {
			last := i == len(segs)-1
			switch {
			case last && s == "":
			case len(s) > MaxControlLine:
				want = append(want, controlLine{size: len(s), tooLong: true})
			case strings.TrimSpace(s) != "":
				want = append(want, controlLine{text: strings.TrimSpace(s), size: len(s)})
			}
		}

		var a lineAssembler
		var got []controlLine
		rest := stream
		for i := 0; len(rest) > 0; i++ {
			n := len(rest)
			if i < len(cuts) {
				n = min(n, int(cuts[i])*97+1)
			}
			got = append(got, a.feed(rest[:n])...)
			rest = rest[n:]
			if len(a.buf) > MaxControlLine {
				t.Fatalf("assembler keeps %d bytes, more than the %d-byte line limit", len(a.buf), MaxControlLine)
			}
		}
		if l, ok := a.end(); ok {
			got = append(got, l)
		}
		if !a.empty() {
			t.Fatal("assembler not empty after end")
		}
		if len(got) != len(want) {
			t.Fatalf("%d lines, want %d: %v vs %v", len(got), len(want), got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("line %d: %v (%d bytes, too long %v), want %v (%d bytes, too long %v)",
					i, got[i], got[i].size, got[i].tooLong, want[i], want[i].size, want[i].tooLong)
			}
		}
	})
}
