package dra

import (
	"context"
	"errors"
	"fmt"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// errNotFound: no device of the snapshot has the name.
var errNotFound = errors.New("no such device")

// claimRef names a claim in messages.
func claimRef(ns, name string, uid types.UID) string { return fmt.Sprintf("%s/%s (%s)", ns, name, uid) }

// prepareClaim works out what one allocated claim gets: for every device
// allocated to it by this driver, the device as it is now and its edits.
// It refuses a device that is not on this node, unhealthy, or held
// exclusively by another prepared claim; the claim is then not prepared
// at all (kubelet retries).
func (d *Driver) prepareClaim(snap *plugin.Snapshot, cp *checkpoint, claim *resourceapi.ResourceClaim) (*preparedClaim, error) {
	if claim.Status.Allocation == nil {
		return nil, errors.New("the claim is not allocated")
	}
	pc := &preparedClaim{Namespace: claim.Namespace, Name: claim.Name, Devices: []preparedDevice{}}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != d.cfg.DriverName {
			continue
		}
		if r.Pool != d.pool {
			return nil, fmt.Errorf("device %s was allocated from pool %q, but this node's pool is %q", r.Device, r.Pool, d.pool)
		}
		dev, monitor, err := findDevice(snap, r.Device)
		switch {
		case errors.Is(err, errNotFound):
			return nil, fmt.Errorf("device %s is not on node %s any more (removed, or its driver is not running)", r.Device, d.pool)
		case err != nil:
			return nil, fmt.Errorf("device %s: %w", r.Device, err)
		case !dev.Healthy:
			return nil, fmt.Errorf("device %s (%s) is unhealthy: %s", r.Device, dev.ID, dev.Reason)
		}
		pd := preparedDevice{Request: r.Request, Pool: r.Pool, Device: r.Device, ID: dev.ID, Node: dev.Name, Index: dev.Index, ShareID: r.ShareID}
		switch admin := r.AdminAccess != nil && *r.AdminAccess; {
		case monitor:
			pd.Use, pd.Edits = useMonitor, dev.Monitor
		case admin:
			// Admin access is for monitoring tools: never the compute node,
			// which another claim may hold.
			if !dev.HasMonitor() {
				return nil, fmt.Errorf("admin access to device %s gives its monitor node only, and it has none", r.Device)
			}
			pd.Use, pd.Edits = useAdmin, dev.Monitor
		default:
			if uid, other, held := cp.holder(r.Device, claim.UID); held {
				return nil, fmt.Errorf("device %s (%s) is already prepared for claim %s: one holder at a time", r.Device, dev.ID, claimRef(other.Namespace, other.Name, uid))
			}
			for _, p := range pc.Devices {
				if p.Device == r.Device && p.Use == useCompute {
					return nil, fmt.Errorf("device %s is allocated twice to the claim", r.Device)
				}
			}
			pd.Use, pd.Edits = useCompute, dev.Compute
		}
		pc.Devices = append(pc.Devices, pd)
	}
	return pc, nil
}

// releaseStale drops from cp the prepared claims that hold, exclusively, a
// compute device allocated to claim but that the API server no longer has
// allocated to that device: deleted (their pod is gone) or deallocated.
// The scheduler gave the device to claim only after that, and kubelet
// unprepares such a claim late when it restarted while its pod went (the
// claim then stays in kubelet's state until its pod cleanup); waiting for
// it would keep the new pod from starting. A holder the API server still
// has allocated, or whose state cannot be read, stays: Prepare then
// refuses. It returns the UIDs dropped.
func (d *Driver) releaseStale(ctx context.Context, cp *checkpoint, claim *resourceapi.ResourceClaim) []types.UID {
	if claim.Status.Allocation == nil {
		return nil
	}
	var released []types.UID
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != d.cfg.DriverName || r.Pool != d.pool || (r.AdminAccess != nil && *r.AdminAccess) {
			continue
		}
		uid, other, held := cp.holder(r.Device, claim.UID)
		if !held {
			continue
		}
		cur, err := d.cfg.Client.ResourceV1().ResourceClaims(other.Namespace).Get(ctx, other.Name, metav1.GetOptions{})
		why := ""
		switch {
		case apierrors.IsNotFound(err):
			why = "the claim was deleted"
		case err != nil:
			d.log.Warn("cannot tell whether the device's holder is still allocated; keeping it", "device", r.Device,
				"holder", claimRef(other.Namespace, other.Name, uid), "err", err)
			continue
		case cur.UID != uid:
			why = "the claim was deleted (a new one has its name)"
		case !allocates(cur, d.cfg.DriverName, d.pool, r.Device):
			why = "the claim no longer has the device allocated"
		default:
			continue // still allocated: a real conflict
		}
		d.log.Info("stale prepared claim released: its device was allocated again", "device", r.Device,
			"stale", claimRef(other.Namespace, other.Name, uid), "why", why, "for", claimRef(claim.Namespace, claim.Name, claim.UID))
		delete(cp.Claims, uid)
		released = append(released, uid)
	}
	return released
}

// allocates says whether the claim has the device allocated.
func allocates(c *resourceapi.ResourceClaim, driver, pool, device string) bool {
	if c.Status.Allocation == nil {
		return false
	}
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver == driver && r.Pool == pool && r.Device == device {
			return true
		}
	}
	return false
}

// result is kubelet's answer for a prepared claim: every device, and the
// CDI device of each request on the request's first device.
func (d *Driver) result(uid types.UID, pc *preparedClaim) kubeletplugin.PrepareResult {
	res := kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{}}
	named := map[string]bool{}
	for _, p := range pc.Devices {
		dev := kubeletplugin.Device{Requests: []string{p.Request}, PoolName: p.Pool, DeviceName: p.Device, ShareID: p.ShareID}
		if !named[p.Request] {
			named[p.Request] = true
			dev.CDIDeviceIDs = []string{d.specs.qualified(uid, p.Request)}
		}
		res.Devices = append(res.Devices, dev)
	}
	return res
}
