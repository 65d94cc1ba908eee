package cluster

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestChartDefaults fails when the versions drift apart (VERSION, the
// chart's version and appVersion) or when the device directory Down cleans
// up and the shared mount Up makes no longer match the chart's devDir, or
// the CDI spec directory Up makes (and containerd reads) its cdi.specDir.
func TestChartDefaults(t *testing.T) {
	c, err := ReadChart("../..")
	if err != nil {
		t.Fatal(err)
	}
	if c.ChartVer != c.Version || c.AppVersion != c.Version {
		t.Errorf("VERSION %q, Chart.yaml version %q, appVersion %q: want all three equal", c.Version, c.ChartVer, c.AppVersion)
	}
	if c.DevDir != fuseDevDir {
		t.Errorf("chart devDir %q, Down unmounts a dead FUSE mount at %q: want them equal", c.DevDir, fuseDevDir)
	}
	if c.CDISpecDir != ChartCDISpecDir || !slices.Contains(CDISpecDirs, c.CDISpecDir) {
		t.Errorf("chart cdi.specDir %q: Up makes %q, containerd reads %q", c.CDISpecDir, ChartCDISpecDir, CDISpecDirs)
	}
	if len(SharedMounts) != 1 || SharedMounts[0] != filepath.Dir(c.DevDir) {
		t.Errorf("SharedMounts %q, want the chart devDir's parent %q", SharedMounts, filepath.Dir(c.DevDir))
	}
}

func TestReadChartErrors(t *testing.T) {
	write := func(t *testing.T, version, chart, values string) string {
		t.Helper()
		d := t.TempDir()
		cd := filepath.Join(d, "charts", "accel-device-plugin")
		if err := os.MkdirAll(cd, 0o755); err != nil {
			t.Fatal(err)
		}
		for p, s := range map[string]string{filepath.Join(d, "VERSION"): version, filepath.Join(cd, "Chart.yaml"): chart, filepath.Join(cd, "values.yaml"): values} {
			if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	good := write(t, "1.2.3\n", "version: 1.2.3\nappVersion: \"1.2.3\"\n", "devDir: /run/x/dev\n")
	if c, err := ReadChart(good); err != nil || c != (Chart{Version: "1.2.3", ChartVer: "1.2.3", AppVersion: "1.2.3", DevDir: "/run/x/dev"}) {
		t.Errorf("ReadChart = %+v, %v", c, err)
	}
	for name, d := range map[string]string{
		"empty VERSION":  write(t, "\n", "version: 1\n", "devDir: /run/x/dev\n"),
		"no VERSION":     t.TempDir(),
		"bad yaml":       write(t, "1\n", "version: [\n", "devDir: /run/x/dev\n"),
		"relative dir":   write(t, "1\n", "version: 1\n", "devDir: run/x\n"),
		"one component":  write(t, "1\n", "version: 1\n", "devDir: /dev\n"),
		"unclean devDir": write(t, "1\n", "version: 1\n", "devDir: /run/x/../dev\n"),
	} {
		if _, err := ReadChart(d); err == nil {
			t.Errorf("%s: ReadChart succeeded, want an error", name)
		}
	}
}
