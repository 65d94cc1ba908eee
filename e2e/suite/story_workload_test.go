package suite

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestWorkload is the workload's story on a mixed node: the simulator runs
// one device of each simulated driver on one core, and two pods asking
// for accel.io/ac run the example (examples/accel-job.c, static, in its
// own image): each maps its device's memory, fills it, submits a job,
// waits, checks the device's answer, and succeeds only if it is right.
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
	pods := []string{"job-a", "job-b", "accel-tool"}
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

	step("two pods run the example, one device each: both get the right answer from their device")
	for _, name := range pods[:2] {
		e.createPod(name, "", withImage(jobImage, "/accel-job"), requests(acRes, 1), runOnce) // its device: $ACCEL_VISIBLE_DEVICES
	}
	var saw []string
	devs := map[string]string{} // device → driver the pod reported
	for _, name := range pods[:2] {
		p := e.awaitPhase(name, corev1.PodSucceeded, 3*time.Minute)
		logs := e.logs(name)
		t.Logf("%s (%s):\n%s", name, p.Status.Phase, logs)
		for _, drv := range []string{"fakedev", "fakenpu"} {
			if strings.Contains(logs, drv+": ") && strings.Contains(logs, "checked") {
				saw = append(saw, drv)
			}
		}
		// "/dev/accel/acN: DRIVER MODEL, serial ..." is the first line.
		if first, _, ok := strings.Cut(logs, "\n"); ok {
			if node, rest, ok := strings.Cut(first, ": "); ok {
				devs[strings.TrimPrefix(node, "/dev/accel/")] = strings.Fields(rest)[0]
			}
		}
	}
	slices.Sort(saw)
	if !slices.Equal(saw, []string{"fakedev", "fakenpu"}) {
		t.Fatalf("the pods' checks came from %v, want one from each driver", saw)
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
