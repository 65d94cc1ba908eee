package plugin

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// DefaultPodResourcesSocket is kubelet's pod-resources socket
// (`serve --pod-resources-socket`).
const DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"

// Holder is a container that kubelet gave a device to.
type Holder struct {
	Namespace, Pod, Container string
	// Use is "compute" or "monitor".
	Use string
}

// PodResources asks kubelet's pod-resources API (List) which containers
// hold which devices: under the device-plugin API, the IDs kubelet
// allocated of PREFIX/ac and PREFIX/ac-monitor; under DRA, the devices of
// the driver PREFIX in the containers' claims. It is asked at scrape time
// only.
type PodResources struct {
	// Socket is kubelet's pod-resources socket.
	Socket string
	// Prefix is the resource prefix (the DRA driver's name).
	Prefix string

	once   sync.Once
	client podresourcesapi.PodResourcesListerClient
	err    error
}

// maxPodResourcesMsg bounds kubelet's answer (every pod of the node).
const maxPodResourcesMsg = 16 << 20

func (p *PodResources) dial() {
	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxPodResourcesMsg)))
	if err != nil {
		p.err = fmt.Errorf("kubelet pod-resources socket %s: %w", p.Socket, err)
		return
	}
	p.client = podresourcesapi.NewPodResourcesListerClient(conn)
}

// Holders returns the holders of each device of snap, by device ID, as
// kubelet reports them within ctx.
func (p *PodResources) Holders(ctx context.Context, snap *Snapshot) (map[string][]Holder, error) {
	p.once.Do(p.dial)
	if p.err != nil {
		return nil, p.err
	}
	resp, err := p.client.List(ctx, &podresourcesapi.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("kubelet pod-resources List at %s: %w", p.Socket, err)
	}
	return holdersOf(resp, p.Prefix, snap), nil
}

// holdersOf reads kubelet's answer: device-plugin IDs of our two resources
// (a monitor slot ID names its device), and DRA devices of our driver by
// their slice names (NAME for compute, NAME-monitor for monitor). IDs and
// names no device of snap has are left out.
func holdersOf(resp *podresourcesapi.ListPodResourcesResponse, prefix string, snap *Snapshot) map[string][]Holder {
	byName := make(map[string]string, len(snap.Devices)) // node name → ID
	known := make(map[string]bool, len(snap.Devices))
	for _, d := range snap.Devices {
		byName[d.Name] = d.ID
		known[d.ID] = true
	}
	out := map[string][]Holder{}
	add := func(id string, h Holder) {
		if known[id] {
			out[id] = append(out[id], h)
		}
	}
	for _, pod := range resp.GetPodResources() {
		for _, c := range pod.GetContainers() {
			h := Holder{Namespace: pod.GetNamespace(), Pod: pod.GetName(), Container: c.GetName()}
			for _, dev := range c.GetDevices() {
				switch dev.GetResourceName() {
				case prefix + "/ac":
					h.Use = "compute"
					for _, id := range dev.GetDeviceIds() {
						add(id, h)
					}
				case prefix + "/ac-monitor":
					h.Use = "monitor"
					for _, slot := range dev.GetDeviceIds() {
						if id, ok := parseMonitorSlotID(slot); ok {
							add(id, h)
						}
					}
				}
			}
			for _, dr := range c.GetDynamicResources() {
				for _, cr := range dr.GetClaimResources() {
					if cr.GetDriverName() != prefix {
						continue
					}
					name, use := cr.GetDeviceName(), "compute"
					if n, ok := strings.CutSuffix(name, "-monitor"); ok {
						name, use = n, "monitor"
					}
					h.Use = use
					add(byName[name], h)
				}
			}
		}
	}
	return out
}
