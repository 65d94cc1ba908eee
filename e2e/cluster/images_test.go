package cluster

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func readTar(t *testing.T, data []byte) map[string]*tar.Header {
	t.Helper()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = h
	}
}

func fileInTar(t *testing.T, data []byte, name string) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in archive: %v", name, err)
		}
		if h.Name == name {
			b, _ := io.ReadAll(tr)
			return b
		}
	}
}

func TestBuildImage(t *testing.T) {
	out := filepath.Join(t.TempDir(), "img.tar")
	entries := []fileEntry{
		{path: "/bin", mode: 0o755, dir: true},
		{path: "/bin/busybox", mode: 0o755, data: []byte("ELF")},
		{path: "/bin/sh", link: "busybox"},
	}
	if err := buildImage(BusyboxImage, entries, imageConfig{Cmd: []string{"sh"}}, out); err != nil {
		t.Fatal(err)
	}
	archive, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(fileInTar(t, archive, "manifest.json"), &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != BusyboxImage || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest %+v", manifest)
	}
	cfgData := fileInTar(t, archive, manifest[0].Config)
	sum := sha256.Sum256(cfgData)
	if manifest[0].Config != hex.EncodeToString(sum[:])+".json" {
		t.Errorf("config name %s is not its digest", manifest[0].Config)
	}
	var cfg struct {
		OS, Architecture string
		Config           imageConfig
		RootFS           struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(cfgData, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH || len(cfg.Config.Cmd) != 1 {
		t.Errorf("config %+v", cfg)
	}
	layer := fileInTar(t, archive, manifest[0].Layers[0])
	lsum := sha256.Sum256(layer)
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(lsum[:]) {
		t.Errorf("diff_ids %v", cfg.RootFS.DiffIDs)
	}
	files := readTar(t, layer)
	if h := files["bin/sh"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
		t.Errorf("bin/sh %+v", h)
	}
	if h := files["bin/busybox"]; h == nil || h.Mode != 0o755 || h.Uid != 0 {
		t.Errorf("bin/busybox %+v", h)
	}
	if h := files["bin/"]; h == nil || h.Typeflag != tar.TypeDir {
		t.Errorf("bin/ %+v", h)
	}
}
