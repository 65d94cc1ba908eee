package kubelet

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	cadvisorapi "github.com/google/cadvisor/lib/model"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
)

// Node is the device-plugin half of a kubelet: kubelet's real device
// manager and the pods it considers active. It serves kubelet.sock in
// kubelet's device-plugin directory, so use it in a private mount namespace
// (see ReexecInPrivateNamespace).
type Node struct {
	Logger    klog.Logger
	NUMANodes int

	mgr  *devicemanager.ManagerImpl
	mu   sync.Mutex
	pods []*v1.Pod
}

type readySources struct{}

func (readySources) AddSource(string) {}
func (readySources) AllReady() bool   { return true }

// Start starts a device manager as kubelet does; after a Stop it starts a
// new one, as a restarted kubelet would (it reads the checkpoint).
func (n *Node) Start() error {
	var topo []cadvisorapi.Node
	for i := range max(n.NUMANodes, 1) {
		topo = append(topo, cadvisorapi.Node{Id: i})
	}
	mgr, err := devicemanager.NewManagerImpl(n.Logger, topo, topologymanager.NewFakeManager(n.Logger))
	if err != nil {
		return fmt.Errorf("new device manager: %w", err)
	}
	active := func() []*v1.Pod {
		n.mu.Lock()
		defer n.mu.Unlock()
		return slices.Clone(n.pods)
	}
	if err := mgr.Start(n.Logger, active, readySources{}, containermap.NewContainerMap(), sets.New[string]()); err != nil {
		return fmt.Errorf("start device manager: %w", err)
	}
	n.mgr = mgr
	return nil
}

// Stop stops the device manager.
func (n *Node) Stop() error {
	if n.mgr == nil {
		return nil
	}
	mgr := n.mgr
	n.mgr = nil
	return mgr.Stop(n.Logger)
}

// Kill stops the device manager the way a killed kubelet ends: its
// connections to the plugins close, and kubelet.sock stays behind with
// nobody answering it, until the next Start's cleanup removes it. (Stop
// alone removes kubelet.sock: the manager's listener unlinks it on close.
// Kill keeps it by making the directory's mount read-only meanwhile, so
// the socket keeps its identity, as after a SIGKILL.) Only in a private
// mount namespace, with the device-plugin directory a mount point.
func (n *Node) Kill() error {
	dir := filepath.Clean(pluginapi.DevicePluginPath)
	const flags = syscall.MS_REMOUNT | syscall.MS_BIND // this mount only
	// EBUSY while a file is being written (the manager's checkpoint, a
	// socket being bound): retry.
	var err error
	for range 100 {
		if err = syscall.Mount("", dir, "", flags|syscall.MS_RDONLY, ""); err != syscall.EBUSY {
			break
		}
		time.Sleep(time.Millisecond) // a retry interval, not synchronisation
	}
	if err != nil {
		return fmt.Errorf("make %s read-only: %w", dir, err)
	}
	stopErr := n.Stop()
	if err := syscall.Mount("", dir, "", flags, ""); err != nil {
		return fmt.Errorf("make %s writable again: %w", dir, err)
	}
	return stopErr
}

// Manager is the running device manager.
func (n *Node) Manager() *devicemanager.ManagerImpl { return n.mgr }

// Resources is capacity and allocatable of one resource.
type Resources struct{ Capacity, Allocatable int64 }

// Capacity is what kubelet would put in the Node status, by resource.
func (n *Node) Capacity() map[string]Resources {
	capacity, alloc, _ := n.mgr.GetCapacity(n.Logger)
	out := map[string]Resources{}
	for name, q := range capacity {
		a := alloc[name]
		out[string(name)] = Resources{q.Value(), a.Value()}
	}
	return out
}

// Admit allocates a one-container pod's devices, as kubelet does when it
// admits the pod, and returns what the container is given.
func (n *Node) Admit(name, res string, count int64) (*devicemanager.DeviceRunContainerOptions, *v1.Pod, error) {
	qty := v1.ResourceList{v1.ResourceName(res): *resource.NewQuantity(count, resource.DecimalSI)}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Spec: v1.PodSpec{Containers: []v1.Container{{
			Name: "main", Resources: v1.ResourceRequirements{Limits: qty, Requests: qty},
		}}},
	}
	ctx := klog.NewContext(context.Background(), n.Logger)
	n.mu.Lock()
	n.pods = append(n.pods, pod)
	n.mu.Unlock()
	if err := n.mgr.Allocate(ctx, pod, &pod.Spec.Containers[0], lifecycle.AddOperation); err != nil {
		n.Forget(pod)
		return nil, nil, err
	}
	opts, err := n.mgr.GetDeviceRunContainerOptions(ctx, pod, &pod.Spec.Containers[0])
	return opts, pod, err
}

// Forget removes a pod from the active pods (it ended); the manager frees
// its devices at the next allocation.
func (n *Node) Forget(pod *v1.Pod) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pods = slices.DeleteFunc(n.pods, func(p *v1.Pod) bool { return p == pod })
}

// Pod returns an admitted pod by name.
func (n *Node) Pod(name string) (*v1.Pod, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.pods {
		if p.Name == name {
			return p, true
		}
	}
	return nil, false
}

// Env returns an environment variable of a container's options.
func Env(opts *devicemanager.DeviceRunContainerOptions, name string) string {
	for _, e := range opts.Envs {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}
