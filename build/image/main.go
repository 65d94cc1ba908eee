// Command image builds the accel-device-plugin container image without
// Docker: one layer holding a statically linked accel-plugin at
// /accel-plugin, no base image, written as an archive that both
// `ctr -n k8s.io images import` and `docker load -i` take.
//
//	cd build/image && go run . \
//	    --binary /abs/_output/accel-plugin \
//	    --image localhost/accel-device-plugin:0.1.0 \
//	    --out /abs/_output/accel-device-plugin-0.1.0.tar \
//	    [--platform linux/amd64]
//
// The archive (written by package oci, which the local cluster uses too)
// is the one docker save writes since Docker 25: an OCI image
// layout (oci-layout, index.json, blobs/sha256/…) with a docker
// manifest.json beside it. index.json names the image both ways:
// io.containerd.image.name (the full name, what ctr shows) and
// org.opencontainers.image.ref.name (the tag).
//
// Same binary, same bytes out: every timestamp in the archive, the layer
// and the config is SOURCE_DATE_EPOCH (0 when unset), and nothing of the
// binary's file but its contents goes in.
//
// Paths are relative to the directory go run is started in (build/image),
// so pass absolute ones.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// platformString is os/arch[/variant].
func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.Binary, "binary", "", "statically linked binary (accel-plugin: CGO_ENABLED=0) to put at --path (required)")
	fs.StringVar(&o.Path, "path", entrypoint, "where the binary goes in the image: its entrypoint")
	fs.StringVar(&o.Image, "image", "", "image name and tag, e.g. localhost/accel-device-plugin:0.1.0 (required)")
	fs.StringVar(&o.Out, "out", "", "archive to write, e.g. _output/accel-device-plugin-0.1.0.tar (required)")
	fs.StringVar(&o.Platform, "platform", "", "linux/ARCH[/VARIANT] of the image; the binary must match (default: the binary's arch)")
	fs.StringVar(&o.Title, "title", "accel-device-plugin", "org.opencontainers.image.title label")
	fs.StringVar(&o.Source, "source", "https://github.com/accel-device-plugin/accel-device-plugin", "org.opencontainers.image.source label")
	fs.StringVar(&o.Version, "version", "", "org.opencontainers.image.version label (default: the image tag)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run . --binary FILE --image NAME:TAG --out FILE.tar [--platform linux/ARCH]")
		fmt.Fprintln(stderr, "Timestamps come from SOURCE_DATE_EPOCH (0 when unset).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var missing []string
	for _, f := range []struct{ name, val string }{{"--binary", o.Binary}, {"--image", o.Image}, {"--out", o.Out}} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 || fs.NArg() > 0 {
		if len(missing) > 0 {
			fmt.Fprintf(stderr, "image: missing %s\n", strings.Join(missing, ", "))
		} else {
			fmt.Fprintf(stderr, "image: unexpected arguments %q\n", fs.Args())
		}
		fs.Usage()
		return 2
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		epoch, err := strconv.ParseInt(s, 10, 64)
		if err != nil || epoch < 0 {
			fmt.Fprintf(stderr, "image: SOURCE_DATE_EPOCH=%q is not a number of seconds since 1970\n", s)
			return 2
		}
		o.Epoch = epoch
	}

	res, err := build(o)
	if err != nil {
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes): %s %s, digest %s, id %s\n",
		o.Out, res.Size, res.Ref.Full, platformString(res.Platform), res.Manifest, res.Config)
	return 0
}
