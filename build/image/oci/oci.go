// Package oci writes a one-layer container image, with no base image, as an
// archive that both `ctr images import` and `docker load -i` take: an OCI
// image layout (oci-layout, index.json, blobs/sha256/…) with a docker
// manifest.json beside it, the way docker save writes it since Docker 25.
//
// It is the project's only image writer: build/image builds the plugin's
// image with it, and the local cluster (e2e/cluster) its pause and busybox
// images. The documents are the OCI image-spec's own Go types; names are
// parsed by github.com/distribution/reference, as containerd and Docker parse
// them. Both stay in the e2e module's existing dependency graph, which is why
// this package does not use go-containerregistry (its requirements would
// raise golang.org/x/... under the Kubernetes packages e2e compiles).
//
// Same Image, same bytes: every timestamp is Image.Created, entries are
// root-owned, and the layer is gzip'ed with a fixed level and an empty
// header.
package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "crypto/sha256" // go-digest's digest.FromBytes needs SHA-256 registered, or it panics
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	// AnnotationContainerdName is what containerd (ctr images import, and
	// docker load with the containerd image store) names an image by.
	AnnotationContainerdName = "io.containerd.image.name"
	// DefaultPath is the PATH BuildKit writes into the config of a FROM
	// scratch image.
	DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// File is one entry of the image's layer: a directory, a symlink or a
// regular file.
type File struct {
	Path string // absolute path in the image
	Mode int64  // permission bits, e.g. 0o755 or 0o1777; ignored for a symlink
	Dir  bool
	Link string // symlink target when not empty
	Data []byte // a regular file's contents
}

// Image describes one image to write.
type Image struct {
	Name      string         // registry/repository:tag; docker.io and :latest are implied as by docker
	Platform  v1.Platform    // OS and Architecture are required
	Files     []File         // the single layer, in this order
	Config    v1.ImageConfig // Entrypoint, Cmd, Env, Labels, …
	CreatedBy string         // the history entry's created_by
	Created   time.Time      // every timestamp in the archive, layer and config; zero means 1970-01-01
}

// Ref is a parsed image name in the forms containerd and docker show.
type Ref struct {
	Full    string // registry/repository:tag, registry always explicit
	RepoTag string // the familiar form docker save writes in RepoTags
	Tag     string
}

// ParseRef parses an image name the way docker does (docker.io/library/ and
// :latest implied) and refuses digests: the archive is named by a tag.
func ParseRef(s string) (Ref, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return Ref{}, fmt.Errorf("image name %q: %w", s, err)
	}
	if _, ok := named.(reference.Digested); ok {
		return Ref{}, fmt.Errorf("image name %q: a digest cannot name an image being built; give a tag", s)
	}
	tagged, ok := reference.TagNameOnly(named).(reference.NamedTagged)
	if !ok {
		return Ref{}, fmt.Errorf("image name %q: no tag", s)
	}
	return Ref{Full: tagged.String(), RepoTag: reference.FamiliarString(tagged), Tag: tagged.Tag()}, nil
}

// Result says what Write wrote.
type Result struct {
	Ref      Ref
	Platform v1.Platform
	Manifest digest.Digest // the image digest (its OCI manifest)
	Config   digest.Digest // the image ID
	Size     int64         // bytes of the archive
}

// blob is content stored under blobs/sha256/.
type blob struct {
	digest digest.Digest
	data   []byte
}

func newBlob(data []byte) blob { return blob{digest.FromBytes(data), data} }

func (b blob) path() string { return "blobs/sha256/" + b.digest.Encoded() }

func (b blob) descriptor(mediaType string) v1.Descriptor {
	return v1.Descriptor{MediaType: mediaType, Size: int64(len(b.data)), Digest: b.digest}
}

// dockerManifest is one entry of docker save's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// Write writes img as an archive at out, via a temporary file in the same
// directory, so a failed write leaves no half archive.
func Write(out string, img Image) (Result, error) {
	ref, err := ParseRef(img.Name)
	if err != nil {
		return Result{}, err
	}
	if img.Platform.OS == "" || img.Platform.Architecture == "" {
		return Result{}, fmt.Errorf("image %s: platform %q/%q: OS and architecture are required",
			ref.Full, img.Platform.OS, img.Platform.Architecture)
	}
	if img.Created.IsZero() {
		img.Created = time.Unix(0, 0)
	}
	if img.Created.Before(time.Unix(0, 0)) {
		return Result{}, fmt.Errorf("image %s: created %v is before 1970", ref.Full, img.Created)
	}
	created := img.Created.UTC()

	ltar, err := layerTar(img.Files, created)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: layer: %w", ref.Full, err)
	}
	lgz, err := gzipBytes(ltar)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: compress the layer: %w", ref.Full, err)
	}
	layer := newBlob(lgz)

	cfgJSON, err := json.Marshal(v1.Image{
		Created:  &created,
		Platform: img.Platform,
		Config:   img.Config,
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(ltar)}},
		History:  []v1.History{{Created: &created, CreatedBy: img.CreatedBy}},
	})
	if err != nil {
		return Result{}, err
	}
	cfg := newBlob(cfgJSON)

	mfJSON, err := json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    cfg.descriptor(v1.MediaTypeImageConfig),
		Layers:    []v1.Descriptor{layer.descriptor(v1.MediaTypeImageLayerGzip)},
	})
	if err != nil {
		return Result{}, err
	}
	mf := newBlob(mfJSON)

	mfDesc := mf.descriptor(v1.MediaTypeImageManifest)
	mfDesc.Annotations = map[string]string{
		AnnotationContainerdName: ref.Full,
		v1.AnnotationRefName:     ref.Tag,
	}
	plat := img.Platform
	mfDesc.Platform = &plat
	indexJSON, err := json.Marshal(v1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageIndex,
		Manifests: []v1.Descriptor{mfDesc},
	})
	if err != nil {
		return Result{}, err
	}
	dockerJSON, err := json.Marshal([]dockerManifest{{
		Config:   cfg.path(),
		RepoTags: []string{ref.RepoTag},
		Layers:   []string{layer.path()},
	}})
	if err != nil {
		return Result{}, err
	}
	layoutJSON, err := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
	if err != nil {
		return Result{}, err
	}

	blobs := []blob{cfg, layer, mf}
	slices.SortFunc(blobs, func(a, b blob) int { return strings.Compare(a.digest.Encoded(), b.digest.Encoded()) })
	files := []File{{Path: "blobs", Dir: true, Mode: 0o755}, {Path: "blobs/sha256", Dir: true, Mode: 0o755}}
	for _, b := range blobs {
		files = append(files, File{Path: b.path(), Mode: 0o644, Data: b.data})
	}
	files = append(files,
		File{Path: "index.json", Mode: 0o644, Data: indexJSON},
		File{Path: "manifest.json", Mode: 0o644, Data: dockerJSON},
		File{Path: v1.ImageLayoutFile, Mode: 0o644, Data: layoutJSON},
	)
	archive, err := tarOf(files, created)
	if err != nil {
		return Result{}, err
	}
	if err := writeFile(out, archive); err != nil {
		return Result{}, fmt.Errorf("image %s: %w", ref.Full, err)
	}
	return Result{Ref: ref, Platform: plat, Manifest: mf.digest, Config: cfg.digest, Size: int64(len(archive))}, nil
}

// layerTar checks the layer's entries and writes them as a tar.
func layerTar(files []File, mtime time.Time) ([]byte, error) {
	seen, dirs := map[string]bool{}, map[string]bool{}
	rel := make([]File, 0, len(files))
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("%q: want a clean absolute path below /", f.Path)
		}
		if seen[f.Path] {
			return nil, fmt.Errorf("%s: twice in the layer", f.Path)
		}
		seen[f.Path] = true
		for dir := path.Dir(f.Path); dir != "/"; dir = path.Dir(dir) {
			if seen[dir] && !dirs[dir] {
				return nil, fmt.Errorf("%s: below %s, which is not a directory in the layer", f.Path, dir)
			}
		}
		if f.Dir {
			dirs[f.Path] = true
		}
		if f.Mode&^0o7777 != 0 {
			return nil, fmt.Errorf("%s: mode %#o: want permission bits only (at most 07777)", f.Path, f.Mode)
		}
		if f.Dir && (f.Link != "" || f.Data != nil) {
			return nil, fmt.Errorf("%s: a directory has no link target or data", f.Path)
		}
		if f.Link != "" && f.Data != nil {
			return nil, fmt.Errorf("%s: a symlink has no data", f.Path)
		}
		f.Path = strings.TrimPrefix(f.Path, "/")
		rel = append(rel, f)
	}
	return tarOf(rel, mtime)
}

// tarOf writes files, in order, as a tar: root-owned, PAX, every mtime the
// same.
func tarOf(files []File, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.Path, Mode: f.Mode, ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case f.Dir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case f.Link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", f.Path, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("%s: %w", f.Path, err)
			}
		}
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

// writeFile writes data at out, 0644, via a temporary file in out's
// directory renamed into place.
func writeFile(out string, data []byte) (err error) {
	dir := filepath.Dir(out)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	_, werr := tmp.Write(data)
	cerr := tmp.Chmod(0o644)
	if err := errors.Join(werr, cerr, tmp.Close()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}
