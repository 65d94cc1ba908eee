package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// Chart holds what the e2e code takes from the repository rather than
// repeating it: the chart's version, appVersion and default devDir, and the
// repository's VERSION file (the Makefile's VERSION, the image tag).
type Chart struct {
	Version    string // VERSION at the repository root
	ChartVer   string // Chart.yaml version
	AppVersion string // Chart.yaml appVersion: the image tag the chart deploys by default
	DevDir     string // values.yaml devDir: where the simulator mounts its devices
	CDISpecDir string // values.yaml cdi.specDir: where the plugin keeps its CDI specs (cdi.enabled)
}

// ReadChart reads Chart from the repository at repoDir (the directory
// holding VERSION and charts/accel-device-plugin).
func ReadChart(repoDir string) (Chart, error) {
	var c Chart
	v, err := os.ReadFile(filepath.Join(repoDir, "VERSION"))
	if err != nil {
		return c, fmt.Errorf("repository version: %w", err)
	}
	if c.Version = strings.TrimSpace(string(v)); c.Version == "" || strings.ContainsAny(c.Version, " \t\n/:") {
		return c, fmt.Errorf("%s: %q is not a version (want one line, e.g. 0.1.0)", filepath.Join(repoDir, "VERSION"), c.Version)
	}
	dir := filepath.Join(repoDir, "charts", "accel-device-plugin")
	var meta struct {
		Version    string `json:"version"`
		AppVersion string `json:"appVersion"`
	}
	if err := readYAML(filepath.Join(dir, "Chart.yaml"), &meta); err != nil {
		return c, err
	}
	var values struct {
		DevDir string `json:"devDir"`
		CDI    struct {
			SpecDir string `json:"specDir"`
		} `json:"cdi"`
	}
	if err := readYAML(filepath.Join(dir, "values.yaml"), &values); err != nil {
		return c, err
	}
	c.ChartVer, c.AppVersion, c.DevDir, c.CDISpecDir = meta.Version, meta.AppVersion, values.DevDir, values.CDI.SpecDir
	if !filepath.IsAbs(c.DevDir) || filepath.Clean(c.DevDir) != c.DevDir || filepath.Dir(c.DevDir) == "/" {
		return c, fmt.Errorf("%s: devDir %q: want a clean absolute path of at least two components", filepath.Join(dir, "values.yaml"), c.DevDir)
	}
	return c, nil
}

func readYAML(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		return fmt.Errorf("chart: %s: %w", path, err)
	}
	return nil
}
