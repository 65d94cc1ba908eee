package cluster

import (
	"context"
	"regexp"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var netnsRE = regexp.MustCompile(`/(?:var/)?run/netns/cni-[0-9a-f-]+`)

// removeSandboxes stops and removes every pod sandbox through containerd's
// CRI service, so containerd tears down their networks (CNI DEL) and
// netns mounts itself. It returns the netns paths it saw, to unmount any
// containerd left behind.
func (c *Cluster) removeSandboxes(ctx context.Context) ([]string, error) {
	conn, err := grpc.NewClient("unix://"+c.containerdSock(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sbs, err := rs.ListPodSandbox(lctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, err
	}
	var netns []string
	var firstErr error
	for _, sb := range sbs.Items {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if st, err := rs.PodSandboxStatus(sctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.Id, Verbose: true}); err == nil {
			for _, v := range st.Info {
				netns = append(netns, netnsRE.FindAllString(v, -1)...)
			}
		}
		if _, err := rs.StopPodSandbox(sctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil && firstErr == nil {
			firstErr = err
		}
		if _, err := rs.RemovePodSandbox(sctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil && firstErr == nil {
			firstErr = err
		}
		cancel()
	}
	return netns, firstErr
}
