package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// entrypoint is where the binary lives in the image; the layer holds
	// nothing else.
	entrypoint = "/accel-plugin"

	// defaultPath is the PATH BuildKit writes into the config of a FROM
	// scratch image, so this image and the Dockerfile's agree.
	defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

	labelTitle   = "org.opencontainers.image.title"
	labelSource  = "org.opencontainers.image.source"
	labelVersion = "org.opencontainers.image.version"

	// annotationContainerdName is what containerd (ctr images import, and
	// docker load with the containerd image store) names an image by.
	annotationContainerdName = "io.containerd.image.name"
	// annotationRefName is the OCI image-layout tag.
	annotationRefName = "org.opencontainers.image.ref.name"
)

// options describe one image build.
type options struct {
	Binary   string // path of the static ELF to put at /accel-plugin
	Image    string // name:tag, e.g. localhost/accel-device-plugin:0.1.0
	Out      string // path of the archive to write
	Platform string // os/arch[/variant]; "" means the binary's own arch
	Title    string // org.opencontainers.image.title
	Source   string // org.opencontainers.image.source
	Version  string // org.opencontainers.image.version; "" means the tag
	Epoch    int64  // seconds since 1970 for every timestamp (SOURCE_DATE_EPOCH)
}

// result says what was written.
type result struct {
	Name           string // full name, as containerd shows it
	RepoTag        string // name in manifest.json, as docker shows it
	Platform       v1.Platform
	ManifestDigest v1.Hash // the image digest (OCI manifest)
	ConfigDigest   v1.Hash // the image ID
	Size           int64   // bytes of the archive
}

// imageRef is a parsed --image.
type imageRef struct {
	Full    string // registry/repository:tag, registry always explicit
	RepoTag string // the familiar form docker save writes in RepoTags
	Tag     string
}

func parseImageRef(s string) (imageRef, error) {
	t, err := name.NewTag(s)
	if err != nil {
		return imageRef{}, fmt.Errorf("--image %q: %v (want e.g. localhost/accel-device-plugin:0.1.0)", s, err)
	}
	reg, repo, tag := t.RegistryStr(), t.RepositoryStr(), t.TagStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	r := imageRef{Full: reg + "/" + repo + ":" + tag, Tag: tag}
	if reg == "docker.io" {
		r.RepoTag = strings.TrimPrefix(repo, "library/") + ":" + tag
	} else {
		r.RepoTag = r.Full
	}
	return r, nil
}

// elfArch maps GOARCH to the ELF machine, class and byte order it builds.
var elfArch = map[string]struct {
	machine elf.Machine
	class   elf.Class
	data    elf.Data
}{
	"amd64":   {elf.EM_X86_64, elf.ELFCLASS64, elf.ELFDATA2LSB},
	"386":     {elf.EM_386, elf.ELFCLASS32, elf.ELFDATA2LSB},
	"arm64":   {elf.EM_AARCH64, elf.ELFCLASS64, elf.ELFDATA2LSB},
	"arm":     {elf.EM_ARM, elf.ELFCLASS32, elf.ELFDATA2LSB},
	"ppc64le": {elf.EM_PPC64, elf.ELFCLASS64, elf.ELFDATA2LSB},
	"s390x":   {elf.EM_S390, elf.ELFCLASS64, elf.ELFDATA2MSB},
	"riscv64": {elf.EM_RISCV, elf.ELFCLASS64, elf.ELFDATA2LSB},
	"loong64": {elf.EM_LOONGARCH, elf.ELFCLASS64, elf.ELFDATA2LSB},
}

func archOf(f *elf.File) string {
	for arch, a := range elfArch {
		if f.Machine == a.machine && f.Class == a.class && f.Data == a.data {
			return arch
		}
	}
	return ""
}

// checkBinary makes sure path is an executable that runs alone in an image
// with no base layer: a statically linked Linux ELF for arch (any arch when
// arch is ""). It returns the ELF's arch. Every error is one line that says
// how to build a binary that passes.
func checkBinary(path, arch string) (string, error) {
	fix := func(goarch string) string {
		if goarch == "" {
			goarch = runtime.GOARCH
		}
		return "build it with CGO_ENABLED=0 GOOS=linux GOARCH=" + goarch + " go build -trimpath ./cmd/plugin"
	}
	f, err := elf.Open(path)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return "", fmt.Errorf("%s is not an ELF executable: %s", path, fix(arch))
		}
		return "", err
	}
	defer f.Close()

	got := archOf(f)
	switch {
	case f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN:
		return "", fmt.Errorf("%s is an ELF %s, not an executable: %s", path, f.Type, fix(arch))
	case f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX:
		return "", fmt.Errorf("%s is built for %s, not Linux: %s", path, f.OSABI, fix(arch))
	case got == "":
		return "", fmt.Errorf("%s is an ELF for %s, which this tool has no GOARCH for: %s", path, f.Machine, fix(arch))
	case arch != "" && got != arch:
		return "", fmt.Errorf("%s is built for %s but the image platform is linux/%s: %s", path, got, arch, fix(arch))
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp := make([]byte, p.Filesz)
			if _, err := p.ReadAt(interp, 0); err != nil {
				interp = []byte("?")
			}
			return "", fmt.Errorf("%s is dynamically linked (interpreter %s) and the image has no libc: %s",
				path, strings.TrimRight(string(interp), "\x00"), fix(got))
		}
	}
	// A static-PIE has a dynamic section for relocating itself but needs no
	// library, so what counts is DT_NEEDED, not the section.
	libs, err := f.ImportedLibraries()
	if err != nil {
		return "", fmt.Errorf("%s: reading its dynamic section: %v: %s", path, err, fix(got))
	}
	if len(libs) > 0 {
		return "", fmt.Errorf("%s needs shared libraries (%s) and the image has no libc: %s",
			path, strings.Join(libs, ", "), fix(got))
	}
	return got, nil
}

func parsePlatform(s string) (v1.Platform, error) {
	p, err := v1.ParsePlatform(s)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("--platform %q: %v", s, err)
	}
	if p.OS != "linux" || p.Architecture == "" || p.OSVersion != "" {
		return v1.Platform{}, fmt.Errorf("--platform %q: want linux/ARCH[/VARIANT], e.g. linux/amd64", s)
	}
	if _, ok := elfArch[p.Architecture]; !ok {
		return v1.Platform{}, fmt.Errorf("--platform %q: unknown architecture %q", s, p.Architecture)
	}
	return *p, nil
}

type blob struct {
	digest v1.Hash
	data   []byte
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, data}
}

func (b blob) path() string { return "blobs/sha256/" + b.digest.Hex }

func (b blob) descriptor(mt types.MediaType) v1.Descriptor {
	return v1.Descriptor{MediaType: mt, Size: int64(len(b.data)), Digest: b.digest}
}

// layerTar is the single layer: the binary at /accel-plugin, root-owned,
// 0755, with mtime epoch. Nothing of the file on disk but its bytes goes in.
func layerTar(bin []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     strings.TrimPrefix(entrypoint, "/"),
		Mode:     0o755,
		Size:     int64(len(bin)),
		ModTime:  mtime,
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// gzipBytes compresses with the standard library at a fixed level and an
// empty gzip header (no name, mtime 0), so the same input and the same Go
// release give the same bytes.
func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// build writes the image archive described by o: an OCI image layout
// (oci-layout, index.json, blobs/sha256/…) and a docker manifest.json in
// one tar, the way docker save writes it since Docker 25, so that both
// `ctr images import` and `docker load` take it. Same inputs, same bytes.
func build(o options) (result, error) {
	var res result
	ref, err := parseImageRef(o.Image)
	if err != nil {
		return res, err
	}
	var plat v1.Platform
	if o.Platform != "" {
		if plat, err = parsePlatform(o.Platform); err != nil {
			return res, err
		}
	}
	arch, err := checkBinary(o.Binary, plat.Architecture)
	if err != nil {
		return res, err
	}
	if o.Platform == "" {
		plat = v1.Platform{OS: "linux", Architecture: arch}
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return res, err
	}
	if o.Epoch < 0 {
		return res, fmt.Errorf("epoch %d is before 1970", o.Epoch)
	}
	created := time.Unix(o.Epoch, 0).UTC()
	version := o.Version
	if version == "" {
		version = ref.Tag
	}

	ltar, err := layerTar(bin, created)
	if err != nil {
		return res, err
	}
	lgz, err := gzipBytes(ltar)
	if err != nil {
		return res, err
	}
	layer := newBlob(lgz)
	diffID := newBlob(ltar).digest

	cfgFile := v1.ConfigFile{
		Architecture: plat.Architecture,
		Variant:      plat.Variant,
		OS:           plat.OS,
		Created:      v1.Time{Time: created},
		History: []v1.History{{
			Created:   v1.Time{Time: created},
			CreatedBy: "COPY accel-plugin " + entrypoint + " # build/image",
		}},
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{diffID}},
		Config: v1.Config{
			Entrypoint: []string{entrypoint},
			Env:        []string{defaultPath},
			Labels: map[string]string{
				labelTitle:   o.Title,
				labelSource:  o.Source,
				labelVersion: version,
			},
		},
	}
	cfgJSON, err := json.Marshal(cfgFile)
	if err != nil {
		return res, err
	}
	cfg := newBlob(cfgJSON)

	mfJSON, err := json.Marshal(v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        cfg.descriptor(types.OCIConfigJSON),
		Layers:        []v1.Descriptor{layer.descriptor(types.OCILayer)},
	})
	if err != nil {
		return res, err
	}
	mf := newBlob(mfJSON)

	mfDesc := mf.descriptor(types.OCIManifestSchema1)
	mfDesc.Annotations = map[string]string{
		annotationContainerdName: ref.Full,
		annotationRefName:        ref.Tag,
	}
	mfDesc.Platform = &plat
	indexJSON, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests:     []v1.Descriptor{mfDesc},
	})
	if err != nil {
		return res, err
	}
	dockerJSON, err := json.Marshal(tarball.Manifest{{
		Config:   cfg.path(),
		RepoTags: []string{ref.RepoTag},
		Layers:   []string{layer.path()},
	}})
	if err != nil {
		return res, err
	}

	blobs := []blob{cfg, layer, mf}
	slices.SortFunc(blobs, func(a, b blob) int { return strings.Compare(a.digest.Hex, b.digest.Hex) })
	files := []archiveFile{{name: "blobs/", dir: true}, {name: "blobs/sha256/", dir: true}}
	for _, b := range blobs {
		files = append(files, archiveFile{name: b.path(), data: b.data})
	}
	files = append(files,
		archiveFile{name: "index.json", data: indexJSON},
		archiveFile{name: "manifest.json", data: dockerJSON},
		archiveFile{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
	)
	size, err := writeArchive(o.Out, files, created)
	if err != nil {
		return res, err
	}
	return result{
		Name:           ref.Full,
		RepoTag:        ref.RepoTag,
		Platform:       plat,
		ManifestDigest: mf.digest,
		ConfigDigest:   cfg.digest,
		Size:           size,
	}, nil
}

type archiveFile struct {
	name string
	dir  bool
	data []byte
}

// writeArchive writes files, in order, as a tar at out (via a temporary
// file in the same directory, so a failed build leaves no half archive).
func writeArchive(out string, files []archiveFile, mtime time.Time) (int64, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, ModTime: mtime, Format: tar.FormatPAX}
		if f.dir {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		} else {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o644, int64(len(f.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return 0, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return 0, err
		}
	}
	if err := tw.Close(); err != nil {
		return 0, err
	}

	dir := filepath.Dir(out)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return 0, err
	}
	return int64(buf.Len()), nil
}
