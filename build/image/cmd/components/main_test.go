package main

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestParseSpec(t *testing.T) {
	s, err := parseSpec("registry.k8s.io/coredns/coredns:v1.14.6=/c/coredns=/usr/local/bin/coredns -x")
	if err != nil {
		t.Fatal(err)
	}
	if s.ref.String() != "registry.k8s.io/coredns/coredns:v1.14.6" || s.bin != "/c/coredns" ||
		strings.Join(s.entrypoint, "|") != "/usr/local/bin/coredns|-x" {
		t.Errorf("parsed %+v", s)
	}
	for _, bad := range []string{"registry.k8s.io/etcd:3.7.0-0", "registry.k8s.io/etcd:3.7.0-0=", "UPPER:x=/bin"} {
		if _, err := parseSpec(bad); err == nil {
			t.Errorf("parseSpec(%q): no error", bad)
		}
	}
}

// TestRun writes two images on one base and reads them back: each has the
// base then its binary, the base is one blob, the binary is at
// /usr/local/bin, the entrypoint is the one asked for.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.tar")
	writeTar(t, base, map[string]string{"etc/os-release": "ID=debian\n"})
	for _, n := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("binary "+n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out.tar")
	if err := run(base, out, []string{"localhost/a:1=" + filepath.Join(dir, "a") + "=/usr/local/bin/a", "localhost/b:2=" + filepath.Join(dir, "b")}); err != nil {
		t.Fatal(err)
	}
	var baseDigests []string
	for ref, bin := range map[string]string{"localhost/a:1": "a", "localhost/b:2": "b"} {
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(out, &tag)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 2 {
			t.Fatalf("%s: %d layers (%v), want 2", ref, len(layers), err)
		}
		d, _ := layers[0].Digest()
		baseDigests = append(baseDigests, d.String())
		rc, err := layers[1].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		found := false
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if h.Name == "usr/local/bin/"+bin && h.Mode == 0o755 {
				var b bytes.Buffer
				_, _ = b.ReadFrom(tr)
				found = b.String() == "binary "+bin
			}
		}
		rc.Close()
		if !found {
			t.Errorf("%s: no /usr/local/bin/%s with its contents", ref, bin)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"a": "/usr/local/bin/a", "b": ""}[bin]
		if strings.Join(cf.Config.Entrypoint, " ") != want || cf.OS != "linux" {
			t.Errorf("%s: entrypoint %q os %q, want %q linux", ref, cf.Config.Entrypoint, cf.OS, want)
		}
	}
	if baseDigests[0] != baseDigests[1] {
		t.Errorf("the base layer differs between images: %v", baseDigests)
	}
	if err := run(base, out, nil); err == nil {
		t.Error("no images: no error")
	}
	if err := run(filepath.Join(dir, "missing.tar"), out, []string{"localhost/a:1=" + filepath.Join(dir, "a")}); err == nil {
		t.Error("a missing base: no error")
	}
}

func writeTar(t *testing.T, path string, files map[string]string) {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for n, c := range files {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(c)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
