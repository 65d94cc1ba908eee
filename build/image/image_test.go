package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/build/image/oci"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

const testImage = "localhost/accel-device-plugin:0.1.0"

var (
	helloMu    sync.Mutex
	helloCache = map[string]string{}
	helloDir   string
)

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "image-test-hello-")
	if err != nil {
		panic(err)
	}
	helloDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// hello builds (once per arch) a tiny static Go program for linux/goarch.
func hello(t *testing.T, goarch string) string {
	t.Helper()
	helloMu.Lock()
	defer helloMu.Unlock()
	if p, ok := helloCache[goarch]; ok {
		return p
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to build the test binary")
	}
	src := filepath.Join(helloDir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"go.mod":  "module hello\n\ngo 1.26\n",
		"main.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from the image\") }\n",
	} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(helloDir, "hello-"+goarch)
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOFLAGS=-buildvcs=false")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building hello for %s: %v\n%s", goarch, err, b)
	}
	helloCache[goarch] = out
	return out
}

func buildOK(t *testing.T, o options) (oci.Result, []byte) {
	t.Helper()
	if o.Image == "" {
		o.Image = testImage
	}
	if o.Title == "" {
		o.Title = "accel-device-plugin"
	}
	if o.Source == "" {
		o.Source = "https://github.com/accel-device-plugin/accel-device-plugin"
	}
	if o.Out == "" {
		o.Out = filepath.Join(t.TempDir(), "_output", "img.tar")
	}
	res, err := build(o)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	b, err := os.ReadFile(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != res.Size {
		t.Errorf("result.Size = %d, archive has %d bytes", res.Size, len(b))
	}
	return res, b
}

type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

func readTar(t *testing.T, r io.Reader) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{h, b})
	}
}

// extract writes the archive's files under dir, for layout.FromPath.
func extract(t *testing.T, entries []tarEntry, dir string) {
	t.Helper()
	for _, e := range entries {
		p := filepath.Join(dir, filepath.FromSlash(e.hdr.Name))
		if e.hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, e.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestArchiveReadsBackBothWays(t *testing.T) {
	bin := hello(t, runtime.GOARCH)
	binBytes, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "_output", "accel-device-plugin-0.1.0.tar")
	res, archive := buildOK(t, options{Binary: bin, Out: out, Platform: "linux/" + runtime.GOARCH})

	// The archive itself: the layout docker save writes since Docker 25.
	entries := readTar(t, bytes.NewReader(archive))
	var names []string
	files := map[string][]byte{}
	for _, e := range entries {
		names = append(names, e.hdr.Name)
		files[e.hdr.Name] = e.data
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || !e.hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: uid/gid %d/%d mtime %v, want 0/0 and the epoch", e.hdr.Name, e.hdr.Uid, e.hdr.Gid, e.hdr.ModTime)
		}
		if strings.HasPrefix(e.hdr.Name, "blobs/sha256/") && e.hdr.Typeflag == tar.TypeReg {
			sum := sha256.Sum256(e.data)
			if want := "blobs/sha256/" + hex.EncodeToString(sum[:]); e.hdr.Name != want {
				t.Errorf("blob %s holds content %s", e.hdr.Name, want)
			}
		}
	}
	if len(names) != 8 || names[0] != "blobs/" || names[1] != "blobs/sha256/" ||
		names[5] != "index.json" || names[6] != "manifest.json" || names[7] != "oci-layout" {
		t.Fatalf("archive entries = %q", names)
	}
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", got)
	}
	var dm tarball.Manifest
	if err := json.Unmarshal(files["manifest.json"], &dm); err != nil {
		t.Fatal(err)
	}
	if len(dm) != 1 || len(dm[0].RepoTags) != 1 || dm[0].RepoTags[0] != testImage ||
		dm[0].Config != "blobs/sha256/"+res.Config.Encoded() || len(dm[0].Layers) != 1 {
		t.Errorf("manifest.json = %s", files["manifest.json"])
	}

	// Read 1: go-containerregistry's docker-save reader, by the tag.
	tag, err := name.NewTag(testImage)
	if err != nil {
		t.Fatal(err)
	}
	viaDocker, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("tarball.ImageFromPath: %v", err)
	}
	if err := validate.Image(viaDocker); err != nil {
		t.Errorf("docker view does not validate: %v", err)
	}

	// Read 2: the OCI image layout, extracted.
	dir := t.TempDir()
	extract(t, entries, dir)
	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json has %d manifests", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.MediaType != types.OCIManifestSchema1 || desc.Digest.String() != res.Manifest.String() {
		t.Errorf("index.json manifest = %s %s, want %s %s", desc.MediaType, desc.Digest, types.OCIManifestSchema1, res.Manifest)
	}
	if got := desc.Annotations["io.containerd.image.name"]; got != testImage {
		t.Errorf("io.containerd.image.name = %q, want %q", got, testImage)
	}
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != "0.1.0" {
		t.Errorf("org.opencontainers.image.ref.name = %q, want 0.1.0", got)
	}
	if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != runtime.GOARCH {
		t.Errorf("index.json platform = %+v", desc.Platform)
	}
	viaOCI, err := lp.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(viaOCI); err != nil {
		t.Errorf("OCI view does not validate: %v", err)
	}
	if d, err := viaOCI.Digest(); err != nil || d.String() != res.Manifest.String() {
		t.Errorf("OCI view digest = %v, %v; want %s", d, err, res.Manifest)
	}

	// Both views are one image: same image ID (config digest), same config
	// bytes, same layer blob. The image digests (manifest digests) are the
	// same manifest too, except that tarball.ImageFromPath always
	// synthesises a Docker schema 2 manifest from manifest.json, so its
	// media types are Docker's where the archive's are OCI's.
	for _, v := range []struct {
		what string
		img  v1.Image
	}{{"docker view", viaDocker}, {"OCI view", viaOCI}} {
		id, err := v.img.ConfigName()
		if err != nil || id.String() != res.Config.String() {
			t.Errorf("%s: image ID = %v, %v; want %s", v.what, id, err, res.Config)
		}
		raw, err := v.img.RawConfigFile()
		if err != nil || !bytes.Equal(raw, files["blobs/sha256/"+res.Config.Encoded()]) {
			t.Errorf("%s: config differs from the config blob (%v)", v.what, err)
		}
	}
	mDocker, err := viaDocker.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	mOCI, err := viaOCI.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	asDocker := mOCI.DeepCopy()
	asDocker.MediaType = types.DockerManifestSchema2
	asDocker.Config.MediaType = types.DockerConfigJSON
	for i := range asDocker.Layers {
		asDocker.Layers[i].MediaType = types.DockerLayer
	}
	jd, _ := json.Marshal(mDocker)
	jo, _ := json.Marshal(asDocker)
	if !bytes.Equal(jd, jo) {
		t.Errorf("manifests differ beyond media types:\ndocker view: %s\nOCI view:    %s", jd, jo)
	}
	if mOCI.Config.MediaType != types.OCIConfigJSON || len(mOCI.Layers) != 1 || mOCI.Layers[0].MediaType != types.OCILayer {
		t.Errorf("OCI manifest media types: %s", jo)
	}

	// The config: entrypoint, labels, platform, timestamps.
	for _, v := range []v1.Image{viaDocker, viaOCI} {
		cf, err := v.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
			t.Errorf("config platform = %s/%s", cf.OS, cf.Architecture)
		}
		if got := strings.Join(cf.Config.Entrypoint, " "); got != "/accel-plugin" || len(cf.Config.Cmd) != 0 {
			t.Errorf("entrypoint %q cmd %q, want [/accel-plugin] and none", cf.Config.Entrypoint, cf.Config.Cmd)
		}
		wantLabels := map[string]string{
			"org.opencontainers.image.title":   "accel-device-plugin",
			"org.opencontainers.image.source":  "https://github.com/accel-device-plugin/accel-device-plugin",
			"org.opencontainers.image.version": "0.1.0",
		}
		if len(cf.Config.Labels) != len(wantLabels) {
			t.Errorf("labels = %v", cf.Config.Labels)
		}
		for k, want := range wantLabels {
			if got := cf.Config.Labels[k]; got != want {
				t.Errorf("label %s = %q, want %q", k, got, want)
			}
		}
		if !cf.Created.Equal(time.Unix(0, 0)) {
			t.Errorf("created = %v, want the epoch", cf.Created)
		}
	}

	// The one layer: /accel-plugin, 0755, root, the binary's bytes.
	for _, v := range []struct {
		what string
		img  v1.Image
	}{{"docker view", viaDocker}, {"OCI view", viaOCI}} {
		layers, err := v.img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: %d layers, %v", v.what, len(layers), err)
		}
		d, _ := layers[0].Digest()
		if want := dm[0].Layers[0]; "blobs/sha256/"+d.Hex != want {
			t.Errorf("%s: layer digest %s, manifest.json has %s", v.what, d, want)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		le := readTar(t, rc)
		rc.Close()
		if len(le) != 1 {
			t.Fatalf("%s: layer has %d entries, want 1", v.what, len(le))
		}
		h := le[0].hdr
		if h.Name != "accel-plugin" || h.Typeflag != tar.TypeReg || h.Mode != 0o755 ||
			h.Uid != 0 || h.Gid != 0 || h.Size != int64(len(binBytes)) || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: layer entry %q type %c mode %o uid/gid %d/%d size %d mtime %v",
				v.what, h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.Size, h.ModTime)
		}
		if !bytes.Equal(le[0].data, binBytes) {
			t.Errorf("%s: layer file differs from the binary", v.what)
		}
	}
}

func TestReproducible(t *testing.T) {
	bin := hello(t, runtime.GOARCH)
	_, first := buildOK(t, options{Binary: bin})

	// The same bytes from another path, with another mtime and mode, into
	// another directory.
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "copy-of-hello")
	if err := os.WriteFile(other, b, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(other, time.Now(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	_, second := buildOK(t, options{Binary: other, Platform: "linux/" + runtime.GOARCH})
	if !bytes.Equal(first, second) {
		t.Fatal("two builds of the same binary differ")
	}

	// SOURCE_DATE_EPOCH moves every timestamp, and only that.
	const epoch = 1700000000
	res, third := buildOK(t, options{Binary: bin, Epoch: epoch})
	if bytes.Equal(first, third) {
		t.Fatal("the epoch changed nothing")
	}
	for _, e := range readTar(t, bytes.NewReader(third)) {
		if !e.hdr.ModTime.Equal(time.Unix(epoch, 0)) {
			t.Errorf("%s: mtime %v, want %v", e.hdr.Name, e.hdr.ModTime, time.Unix(epoch, 0))
		}
		if e.hdr.Name == "blobs/sha256/"+res.Config.Encoded() {
			var cf v1.ConfigFile
			if err := json.Unmarshal(e.data, &cf); err != nil {
				t.Fatal(err)
			}
			if !cf.Created.Equal(time.Unix(epoch, 0)) {
				t.Errorf("created = %v, want %v", cf.Created, time.Unix(epoch, 0))
			}
		}
	}
}

// assertRejected checks err is the one-line, actionable refusal and that no
// archive was left behind.
func assertRejected(t *testing.T, err error, out string, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("build accepted the binary")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	for _, w := range append([]string{"build it with CGO_ENABLED=0"}, wants...) {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not say %q", msg, w)
		}
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an archive was written at %s (%v)", out, err)
	}
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*"))
	if len(matches) > 0 {
		t.Errorf("temporary files left: %v", matches)
	}
	t.Logf("refused: %s", msg)
}

func TestRejectsDynamicBinary(t *testing.T) {
	var dyn string
	for _, p := range []string{"/bin/true", "/usr/bin/true"} {
		if _, err := os.Stat(p); err == nil {
			dyn = p
			break
		}
	}
	if dyn == "" {
		t.Skip("no /bin/true")
	}
	if arch, err := checkBinary(dyn, ""); err == nil {
		t.Skipf("%s is a static %s binary on this system", dyn, arch)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	_, err := build(options{Binary: dyn, Image: testImage, Out: out})
	assertRejected(t, err, out, "dynamically linked", dyn)
}

func TestRejectsWrongArch(t *testing.T) {
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	bin := hello(t, other)
	out := filepath.Join(t.TempDir(), "img.tar")
	_, err := build(options{Binary: bin, Image: testImage, Out: out, Platform: "linux/" + runtime.GOARCH})
	assertRejected(t, err, out, "built for "+other, "GOARCH="+runtime.GOARCH)

	// Without --platform the image takes the binary's arch.
	res, _ := buildOK(t, options{Binary: bin})
	if res.Platform.Architecture != other || res.Platform.OS != "linux" {
		t.Errorf("platform = %s, want linux/%s", platformString(res.Platform), other)
	}
}

func TestRejectsNonELF(t *testing.T) {
	script := filepath.Join(t.TempDir(), "accel-plugin")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	_, err := build(options{Binary: script, Image: testImage, Out: out})
	assertRejected(t, err, out, "not an ELF")
}

func TestImageRef(t *testing.T) {
	for _, c := range []struct{ in, full, repoTag, tag string }{
		{"localhost/accel-device-plugin:0.1.0", "localhost/accel-device-plugin:0.1.0", "localhost/accel-device-plugin:0.1.0", "0.1.0"},
		{"localhost:5000/team/accel:v2", "localhost:5000/team/accel:v2", "localhost:5000/team/accel:v2", "v2"},
		{"accel-device-plugin:0.1.0", "docker.io/library/accel-device-plugin:0.1.0", "accel-device-plugin:0.1.0", "0.1.0"},
		{"ghcr.io/acme/accel", "ghcr.io/acme/accel:latest", "ghcr.io/acme/accel:latest", "latest"},
	} {
		r, err := oci.ParseRef(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if r.Full != c.full || r.RepoTag != c.repoTag || r.Tag != c.tag {
			t.Errorf("%s: got %+v, want full %s repoTag %s tag %s", c.in, r, c.full, c.repoTag, c.tag)
		}
	}
	for _, bad := range []string{"", "localhost/UPPER:1", "no spaces:1", "localhost/x@sha256:" + strings.Repeat("a", 64)} {
		if _, err := oci.ParseRef(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCLI(t *testing.T) {
	bin := hello(t, runtime.GOARCH)
	out := filepath.Join(t.TempDir(), "_output", "accel-device-plugin-0.1.0.tar")
	var stdout, stderr bytes.Buffer

	if code := run([]string{"--binary", bin}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "missing --image, --out") {
		t.Errorf("missing flags: exit %d, stderr %q", code, stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"--binary", "/bin/true", "--image", testImage, "--out", out}, &stdout, &stderr); code != 1 ||
		strings.Count(stderr.String(), "\n") != 1 || !strings.Contains(stderr.String(), "CGO_ENABLED=0") {
		t.Errorf("dynamic binary: exit %d, stderr %q", code, stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	t.Setenv("SOURCE_DATE_EPOCH", "not-a-number")
	if code := run([]string{"--binary", bin, "--image", testImage, "--out", out}, &stdout, &stderr); code != 2 {
		t.Errorf("bad SOURCE_DATE_EPOCH: exit %d, stderr %q", code, stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	args := []string{"--binary", bin, "--image", testImage, "--out", out, "--platform", "linux/" + runtime.GOARCH, "--version", "0.1.0-rc1"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if !strings.HasPrefix(stdout.String(), "wrote "+out) || !strings.Contains(stdout.String(), testImage) {
		t.Errorf("stdout = %q", stdout.String())
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Labels["org.opencontainers.image.version"]; got != "0.1.0-rc1" {
		t.Errorf("version label = %q", got)
	}
	if !cf.Created.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("created = %v", cf.Created)
	}
}

// TestCommandAsBuilt runs the tool as `make image` does, as its own binary:
// the test binary links what the tests import (crypto/sha256 among them),
// which hid that the tool itself did not register SHA-256 and panicked in
// go-digest at its first digest.
func TestCommandAsBuilt(t *testing.T) {
	bin := hello(t, runtime.GOARCH)
	tool := filepath.Join(t.TempDir(), "image")
	build := exec.Command("go", "build", "-o", tool, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	b, err := exec.Command(tool, "--binary", bin, "--image", testImage, "--out", out).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(b), "wrote "+out) {
		t.Fatalf("%s: %v\n%s", tool, err, b)
	}
	if _, err := tarball.ImageFromPath(out, nil); err != nil {
		t.Fatal(err)
	}
}

// --path puts the binary (a C program built with gcc -static, as the
// example image is) elsewhere, and it is the entrypoint; a relative or
// directory path is refused.
func TestPath(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found")
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "job.c"), filepath.Join(dir, "accel-job")
	if err := os.WriteFile(src, []byte("int main(void) { return 0; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(gcc, "-static", "-o", bin, src).CombinedOutput(); err != nil {
		t.Skipf("gcc -static (libc6-dev): %v\n%s", err, out)
	}
	_, archive := buildOK(t, options{Binary: bin, Path: "/accel-job"})
	if !bytes.Contains(archive, []byte(`"Entrypoint":["/accel-job"]`)) {
		t.Errorf("the image config does not name /accel-job as its entrypoint")
	}
	for _, p := range []string{"accel-job", "/bin/", "/a/../b"} {
		_, err := build(options{Binary: bin, Image: testImage, Out: filepath.Join(dir, "x.tar"), Path: p})
		if err == nil || !strings.Contains(err.Error(), "--path") {
			t.Errorf("--path %q: %v, want it refused", p, err)
		}
	}
}
