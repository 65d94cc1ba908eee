package plugin

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// podResourcesServer answers List as kubelet's pod-resources API does,
// with a fixed answer.
type podResourcesServer struct {
	podresourcesapi.UnimplementedPodResourcesListerServer
	resp *podresourcesapi.ListPodResourcesResponse
}

func (s *podResourcesServer) List(context.Context, *podresourcesapi.ListPodResourcesRequest) (*podresourcesapi.ListPodResourcesResponse, error) {
	return s.resp, nil
}

func servePodResources(t *testing.T, resp *podresourcesapi.ListPodResourcesResponse) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "kubelet.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	podresourcesapi.RegisterPodResourcesListerServer(srv, &podResourcesServer{resp: resp})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return sock
}

// accel_device_holder names, per device, the containers kubelet gave it
// to: device-plugin IDs (a monitor slot names its device) and DRA devices
// of our driver; other resources and drivers, and unknown IDs, are left
// out.
func TestHolderMetrics(t *testing.T) {
	st := newSysTree(t)
	st.habanalabs(0, "0000:3b:00.0", 0)
	st.ivpu(1, "0000:00:0b.0")
	st.qaic(2, "0000:01:00.0", 0)
	store := runKernelTree(t, st)
	awaitDevices(t, store, 5*time.Second, "three", func(m map[string]Device) bool { return len(m) == 3 })
	devs := func(res string, ids ...string) *podresourcesapi.ContainerDevices {
		return &podresourcesapi.ContainerDevices{ResourceName: res, DeviceIds: ids}
	}
	claim := func(driver, device string) *podresourcesapi.DynamicResource {
		return &podresourcesapi.DynamicResource{ClaimName: "c", ClaimNamespace: "ns", ClaimResources: []*podresourcesapi.ClaimResource{{DriverName: driver, DeviceName: device}}}
	}
	sock := servePodResources(t, &podresourcesapi.ListPodResourcesResponse{PodResources: []*podresourcesapi.PodResources{
		{Name: "train", Namespace: "ml", Containers: []*podresourcesapi.ContainerResources{{Name: "main", Devices: []*podresourcesapi.ContainerDevices{
			devs("accel.io/ac", "habanalabs-0000-3b-00.0", "no-such-device"), devs("nvidia.com/gpu", "intel_vpu-0000-00-0b.0"),
		}}}},
		{Name: "top", Namespace: "ops", Containers: []*podresourcesapi.ContainerResources{{Name: "smi", Devices: []*podresourcesapi.ContainerDevices{
			devs("accel.io/ac-monitor", MonitorSlotID("habanalabs-0000-3b-00.0", 3)),
		}}}},
		{Name: "infer", Namespace: "ml", Containers: []*podresourcesapi.ContainerResources{{Name: "srv",
			DynamicResources: []*podresourcesapi.DynamicResource{claim("accel.io", "accel1"), claim("accel.io", "accel2-monitor"), claim("gpu.example.com", "accel2")}}}},
	}})
	metrics := NewMetrics(store, time.Second)
	metrics.devices.holders = &PodResources{Socket: sock, Prefix: "accel.io"}
	mfs := mustGather(t, metrics.Registry)
	var got []string
	for _, mf := range mfs {
		if mf.GetName() != "accel_device_holder" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var l []string
			for _, p := range m.GetLabel() {
				l = append(l, p.GetName()+"="+p.GetValue())
			}
			got = append(got, strings.Join(l, ","))
		}
	}
	want := []string{
		"container=main,device=accel0,id=habanalabs-0000-3b-00.0,namespace=ml,pod=train,use=compute",
		"container=smi,device=accel0,id=habanalabs-0000-3b-00.0,namespace=ops,pod=top,use=monitor",
		"container=srv,device=accel1,id=intel_vpu-0000-00-0b.0,namespace=ml,pod=infer,use=compute",
		"container=srv,device=accel2,id=qaic-0000-01-00.0,namespace=ml,pod=infer,use=monitor",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("accel_device_holder:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// No kubelet there: the scrape still succeeds, without the series.
	metrics.devices.holders = &PodResources{Socket: filepath.Join(t.TempDir(), "none.sock"), Prefix: "accel.io"}
	for _, mf := range mustGather(t, metrics.Registry) {
		if mf.GetName() == "accel_device_holder" {
			t.Errorf("holder series without a kubelet: %v", mf)
		}
	}
}
