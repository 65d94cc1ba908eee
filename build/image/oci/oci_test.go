package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

var linux = v1.Platform{OS: "linux", Architecture: "amd64"}

// layerOf reads the one layer of the archive at out back through
// index.json → manifest → layer blob, as containerd does.
func layerOf(t *testing.T, out string) []*tar.Header {
	t.Helper()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		blobs[h.Name], _ = io.ReadAll(tr)
	}
	var idx v1.Index
	if err := json.Unmarshal(blobs["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, blobs["index.json"])
	}
	var mf v1.Manifest
	if err := json.Unmarshal(blobs["blobs/sha256/"+idx.Manifests[0].Digest.Encoded()], &mf); err != nil || len(mf.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blobs["blobs/sha256/"+mf.Layers[0].Digest.Encoded()]))
	if err != nil {
		t.Fatal(err)
	}
	var hdrs []*tar.Header
	lr := tar.NewReader(zr)
	for {
		h, err := lr.Next()
		if err == io.EOF {
			return hdrs
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, h)
	}
}

func TestLayerEntries(t *testing.T) {
	out := filepath.Join(t.TempDir(), "img.tar")
	when := time.Unix(1700000000, 0)
	_, err := Write(out, Image{Name: "localhost/x:1", Platform: linux, Created: when, Files: []File{
		{Path: "/tmp", Mode: 0o1777, Dir: true},
		{Path: "/bin/busybox", Mode: 0o755, Data: []byte("ELF")},
		{Path: "/bin/sh", Link: "busybox"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	hdrs := layerOf(t, out)
	var got []string
	for _, h := range hdrs {
		got = append(got, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(when) {
			t.Errorf("%s: uid/gid %d/%d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
	}
	if strings.Join(got, " ") != "tmp/ bin/busybox bin/sh" {
		t.Fatalf("layer entries %q, want them in the given order", got)
	}
	if h := hdrs[0]; h.Typeflag != tar.TypeDir || h.Mode != 0o1777 {
		t.Errorf("tmp/: type %c mode %o", h.Typeflag, h.Mode)
	}
	if h := hdrs[1]; h.Typeflag != tar.TypeReg || h.Mode != 0o755 || h.Size != 3 {
		t.Errorf("bin/busybox: type %c mode %o size %d", h.Typeflag, h.Mode, h.Size)
	}
	if h := hdrs[2]; h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
		t.Errorf("bin/sh: type %c link %q", h.Typeflag, h.Linkname)
	}
}

func TestRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		what string
		img  Image
		want string
	}{
		{"relative path", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "bin/sh", Data: []byte{}}}}, "clean absolute path"},
		{"dot-dot path", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "/bin/../../etc", Dir: true}}}, "clean absolute path"},
		{"root", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "/", Dir: true}}}, "clean absolute path"},
		{"twice", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "/a", Dir: true}, {Path: "/a", Link: "b"}}}, "twice"},
		{"dir with data", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "/a", Dir: true, Data: []byte("x")}}}, "directory"},
		{"link with data", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "/a", Link: "b", Data: []byte("x")}}}, "symlink"},
		{"below a file", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "/a", Data: []byte("x")}, {Path: "/a/b", Data: []byte("y")}}}, "not a directory"},
		{"below a symlink", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "/usr/bin", Link: "../bin"}, {Path: "/usr/bin/sh", Link: "busybox"}}}, "not a directory"},
		{"type bits in mode", Image{Name: "localhost/x:1", Platform: linux, Files: []File{{Path: "/a", Mode: 0o100644, Data: []byte("x")}}}, "permission bits only"},
		{"no platform", Image{Name: "localhost/x:1"}, "OS and architecture"},
		{"digest", Image{Name: "localhost/x@sha256:" + strings.Repeat("a", 64), Platform: linux}, "digest"},
		{"bad name", Image{Name: "localhost/UPPER:1", Platform: linux}, "image name"},
		{"before 1970", Image{Name: "localhost/x:1", Platform: linux, Created: time.Unix(-1, 0)}, "before 1970"},
	} {
		out := filepath.Join(dir, "img.tar")
		_, err := Write(out, c.img)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want one naming %q", c.what, err, c.want)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("%s: an archive was left at %s", c.what, out)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestParseRef(t *testing.T) {
	for _, c := range []struct{ in, full, repoTag, tag string }{
		{"localhost/pause:3.10", "localhost/pause:3.10", "localhost/pause:3.10", "3.10"},
		{"busybox", "docker.io/library/busybox:latest", "busybox:latest", "latest"},
		{"acme/accel:v2", "docker.io/acme/accel:v2", "acme/accel:v2", "v2"},
	} {
		r, err := ParseRef(c.in)
		if err != nil || r.Full != c.full || r.RepoTag != c.repoTag || r.Tag != c.tag {
			t.Errorf("%s: %+v, %v; want %s %s %s", c.in, r, err, c.full, c.repoTag, c.tag)
		}
	}
}
