package main

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/accel-device-plugin/accel-device-plugin/build/image/oci"
)

const (
	// entrypoint is where the binary lives in the image; the layer holds
	// nothing else.
	entrypoint = "/accel-plugin"

	labelTitle   = "org.opencontainers.image.title"
	labelSource  = "org.opencontainers.image.source"
	labelVersion = "org.opencontainers.image.version"
)

// options describe one image build.
type options struct {
	Binary   string // path of the static ELF to put at Path
	Path     string // where the binary goes in the image, its entrypoint ("" means /accel-plugin)
	Image    string // name:tag, e.g. localhost/accel-device-plugin:0.1.0
	Out      string // path of the archive to write
	Platform string // os/arch[/variant]; "" means the binary's own arch
	Title    string // org.opencontainers.image.title
	Source   string // org.opencontainers.image.source
	Version  string // org.opencontainers.image.version; "" means the tag
	Epoch    int64  // seconds since 1970 for every timestamp (SOURCE_DATE_EPOCH)
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
		return "", fmt.Errorf("%s: reading its dynamic section: %w: %s", path, err, fix(got))
	}
	if len(libs) > 0 {
		return "", fmt.Errorf("%s needs shared libraries (%s) and the image has no libc: %s",
			path, strings.Join(libs, ", "), fix(got))
	}
	return got, nil
}

// parsePlatform parses --platform: linux/ARCH[/VARIANT] for an ARCH this
// tool knows the ELF machine of.
func parsePlatform(s string) (v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "linux" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
		return v1.Platform{}, fmt.Errorf("--platform %q: want linux/ARCH[/VARIANT], e.g. linux/amd64", s)
	}
	if _, ok := elfArch[parts[1]]; !ok {
		return v1.Platform{}, fmt.Errorf("--platform %q: unknown architecture %q", s, parts[1])
	}
	p := v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// build writes the image archive described by o (see oci.Write): the binary
// alone at /accel-plugin, 0755, and the labels. Same inputs, same bytes.
func build(o options) (oci.Result, error) {
	ref, err := oci.ParseRef(o.Image)
	if err != nil {
		return oci.Result{}, fmt.Errorf("--image: %w (want e.g. localhost/accel-device-plugin:0.1.0)", err)
	}
	var plat v1.Platform
	if o.Platform != "" {
		if plat, err = parsePlatform(o.Platform); err != nil {
			return oci.Result{}, err
		}
	}
	arch, err := checkBinary(o.Binary, plat.Architecture)
	if err != nil {
		return oci.Result{}, err
	}
	if o.Platform == "" {
		plat = v1.Platform{OS: "linux", Architecture: arch}
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return oci.Result{}, err
	}
	if o.Epoch < 0 {
		return oci.Result{}, fmt.Errorf("epoch %d is before 1970", o.Epoch)
	}
	version := o.Version
	if version == "" {
		version = ref.Tag
	}
	path := o.Path
	if path == "" {
		path = entrypoint
	}
	if !strings.HasPrefix(path, "/") || strings.Contains(path, "..") || strings.HasSuffix(path, "/") {
		return oci.Result{}, fmt.Errorf("--path %q: want an absolute file path, e.g. %s", o.Path, entrypoint)
	}
	return oci.Write(o.Out, oci.Image{
		Name:     o.Image,
		Platform: plat,
		Files:    []oci.File{{Path: path, Mode: 0o755, Data: bin}},
		Config: v1.ImageConfig{
			Entrypoint: []string{path},
			Env:        []string{oci.DefaultPath},
			Labels: map[string]string{
				labelTitle:   o.Title,
				labelSource:  o.Source,
				labelVersion: version,
			},
		},
		CreatedBy: "COPY " + filepath.Base(path) + " " + path + " # build/image",
		Created:   time.Unix(o.Epoch, 0),
	})
}
