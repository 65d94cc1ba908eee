package suite

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestWorkload is the workload's story on a mixed node: the simulator runs
// one device of each simulated driver on one core, and a pod asking for
// both (accel.io/ac: 2) runs the example (examples/accel-job.c, static,
// in its own image) on each: it maps the device's memory, fills it,
// submits a job, waits, checks the device's answer, and succeeds only if
// every answer is right. (One pod per device could get the same device
// twice: the first pod may end before the second is admitted.)
// The devices' info then shows the jobs and the busy time the pods
// caused, and the node's labels name both drivers.
func TestWorkload(t *testing.T) {
	e := newEnv(t)
	jobImage := os.Getenv("ACCEL_E2E_JOB_IMAGE")
	if jobImage == "" {
		t.Skip("ACCEL_E2E_JOB_IMAGE is not set: `make e2e` builds and imports localhost/accel-job (make image)")
	}
	start := time.Now()
	step := func(name string) { t.Logf("%6.1fs  %s", time.Since(start).Seconds(), name) }
	pods := []string{"job", "accel-tool"}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []string{"plugin", "sim"} {
				t.Logf("--- %s pods:\n%s", p, e.podLogsByComponent(p))
			}
		}
		for _, name := range pods {
			e.deletePodIn(namespace, name)
		}
		e.runErr(e.helm, "uninstall", release, "--namespace", namespace, "--wait")
	})

	step("helm install: a mixed simulator, fakedev:1,fakenpu:1")
	e.run(e.helm, e.helmArgs(modes[0], "--set", "simulator.drivers=fakedev:1\\,fakenpu:1")...)
	e.awaitChartPods(modes[0])
	e.awaitAllocatable(time.Minute, 2, 2, 2*slots, 2*slots)
	e.eventually(30*time.Second, "node labels of a mixed node", func() (bool, string) {
		_, _, l := e.quantities(acRes)
		return l["accel.io/ac.count"] == "2" && l["accel.io/ac.drivers"] == "fakedev.fakenpu", fmt.Sprint(l)
	})

	step("a pod with both devices runs the example on each: both answers are right")
	e.createPod("job", "", withImage(jobImage, "/accel-job"), requests(acRes, 2), runOnce) // its devices: $ACCEL_VISIBLE_DEVICES
	p := e.awaitPhase("job", corev1.PodSucceeded, 3*time.Minute)
	logs := e.logs("job")
	t.Logf("job (%s):\n%s", p.Status.Phase, logs)
	var saw []string
	devs := map[string]string{} // device → the driver the example reported for it
	for _, line := range strings.Split(logs, "\n") {
		// "/dev/accel/acN: DRIVER MODEL, serial ..." starts each device's part.
		if node, rest, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(node, "/dev/accel/") && len(strings.Fields(rest)) > 0 {
			devs[strings.TrimPrefix(node, "/dev/accel/")] = strings.Fields(rest)[0]
		}
		for _, drv := range []string{"fakedev", "fakenpu"} {
			if strings.HasPrefix(line, drv+": ") && strings.Contains(line, "checked") {
				saw = append(saw, drv)
			}
		}
	}
	slices.Sort(saw)
	drivers := slices.Sorted(maps.Values(devs))
	if !slices.Equal(saw, []string{"fakedev", "fakenpu"}) || !slices.Equal(drivers, saw) {
		t.Fatalf("the pods' checks came from %v on devices %v, want one from each driver on its own device", saw, devs)
	}

	step("the devices' info: jobs completed and busy time from the pods' work, no memory left behind")
	e.createPod("accel-tool", "", withImage(e.image, "/accel-plugin", "events", "--dir", e.devDir), e.hostAccess(true))
	e.awaitPhase("accel-tool", corev1.PodRunning, 2*time.Minute)
	for dev, drv := range devs {
		out := e.mustExec("accel-tool", "/accel-plugin", "info", e.devDir+"/"+dev)
		var info struct {
			Driver        string `json:"driver"`
			JobsCompleted uint64 `json:"jobs_completed"`
			BusyNS        int64  `json:"busy_ns"`
			MemoryUsed    uint64 `json:"memory_used"`
		}
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("info %s: %v: %s", dev, err, out)
		}
		if info.Driver != drv || info.JobsCompleted == 0 || info.BusyNS <= 0 || info.MemoryUsed != 0 {
			t.Errorf("%s after its pod: %s; want driver %s, jobs and busy time, memory_used 0", dev, out, drv)
		}
	}
	step("done")
}
