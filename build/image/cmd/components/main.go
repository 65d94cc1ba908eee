// Command components writes the images a kind node carries for kubeadm and
// its CNI (package kind of the e2e module) into one docker archive, each
// image a statically linked binary at /usr/local/bin on one shared base
// layer (a Debian rootfs tar), which the archive holds once:
//
//	go run ./cmd/components --base BASE.tar --out OUT.tar \
//	    REF=BINARY[=ENTRYPOINT] ...
//
// e.g. registry.k8s.io/kube-proxy:v1.37.2=/cache/kube-proxy, or
// localhost/kube-router:v2.1.0=/cache/kube-router=/usr/local/bin/kube-router.
// `ctr images import` and `docker load` take the archive.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	base := flag.String("base", "", "rootfs tar every image is layered on (required)")
	out := flag.String("out", "", "docker archive to write (required)")
	flag.Parse()
	if err := run(*base, *out, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "components:", err)
		os.Exit(1)
	}
}

// spec is one image: its reference, its binary and its entrypoint.
type spec struct {
	ref        name.Reference
	bin        string
	entrypoint []string
}

func parseSpec(arg string) (spec, error) {
	parts := strings.SplitN(arg, "=", 3)
	if len(parts) < 2 || parts[1] == "" {
		return spec{}, fmt.Errorf("%q: want REF=BINARY[=ENTRYPOINT]", arg)
	}
	ref, err := name.ParseReference(parts[0])
	if err != nil {
		return spec{}, fmt.Errorf("%q: %w", arg, err)
	}
	s := spec{ref: ref, bin: parts[1]}
	if len(parts) == 3 {
		s.entrypoint = strings.Fields(parts[2])
	}
	return s, nil
}

func run(base, out string, args []string) error {
	if base == "" || out == "" || len(args) == 0 {
		return errors.New("usage: components --base BASE.tar --out OUT.tar REF=BINARY[=ENTRYPOINT] (one or more)")
	}
	baseLayer, err := tarball.LayerFromFile(base, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return fmt.Errorf("base layer %s: %w", base, err)
	}
	refs := map[name.Reference]v1.Image{}
	for _, a := range args {
		s, err := parseSpec(a)
		if err != nil {
			return err
		}
		bin, err := binaryLayer(s.bin)
		if err != nil {
			return err
		}
		img, err := mutate.AppendLayers(empty.Image, baseLayer, bin)
		if err != nil {
			return err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return err
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", runtime.GOARCH
		cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
		cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		cf.Config.Entrypoint = s.entrypoint
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return err
		}
		refs[s.ref] = img
	}
	if err := tarball.MultiRefWriteToFile(out, refs); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

// binaryLayer is a layer holding the binary at path as /usr/local/bin/NAME.
func binaryLayer(path string) (v1.Layer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/bin/" + filepath.Base(path),
		Mode: 0o755, Size: int64(len(data))}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := b.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
		tarball.WithCompressionLevel(gzip.BestSpeed))
}
