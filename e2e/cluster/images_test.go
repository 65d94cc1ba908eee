package cluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// tarFiles reads a tar into its headers and contents by name.
func tarFiles(t *testing.T, r io.Reader) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hdrs, data
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name], data[h.Name] = h, b
	}
}

// TestBusyboxImage reads the busybox image back the way docker load does
// (manifest.json → config → layer) and checks the tree the pods' shells
// need: busybox at /bin/busybox, applets linked to it, /tmp sticky.
func TestBusyboxImage(t *testing.T) {
	out := filepath.Join(t.TempDir(), "busybox.tar")
	files := busyboxFiles([]byte("ELF"), map[string]bool{"sh": true, "ls": true})
	if err := writeImage(BusyboxImage, files, v1.ImageConfig{Cmd: []string{"sh"}}, out); err != nil {
		t.Fatal(err)
	}
	archive, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	_, blobs := tarFiles(t, bytes.NewReader(archive))
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(blobs["manifest.json"], &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != BusyboxImage || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest.json %+v", manifest)
	}
	var cfg v1.Image
	if err := json.Unmarshal(blobs[manifest[0].Config], &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH || len(cfg.Config.Cmd) != 1 || cfg.Config.Cmd[0] != "sh" {
		t.Errorf("config %+v", cfg)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blobs[manifest[0].Layers[0]]))
	if err != nil {
		t.Fatal(err)
	}
	layer, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != digest.FromBytes(layer) {
		t.Errorf("diff_ids %v, layer %s", cfg.RootFS.DiffIDs, digest.FromBytes(layer))
	}
	hdrs, data := tarFiles(t, bytes.NewReader(layer))
	for _, applet := range []string{"bin/sh", "bin/ls"} {
		if h := hdrs[applet]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("%s %+v", applet, h)
		}
	}
	if h := hdrs["bin/busybox"]; h == nil || h.Mode != 0o755 || h.Uid != 0 || string(data["bin/busybox"]) != "ELF" {
		t.Errorf("bin/busybox %+v", h)
	}
	if h := hdrs["tmp/"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != 0o1777 {
		t.Errorf("tmp/ %+v", h)
	}
	if h := hdrs["usr/bin"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "../bin" {
		t.Errorf("usr/bin %+v", h)
	}
}
