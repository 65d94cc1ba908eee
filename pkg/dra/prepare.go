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
// exclusively by another prepared claim still allocated it; the claim is
// then not prepared at all (kubelet retries). A stale holder (see stale)
// is dropped from cp instead, and returned in released, also with an
// error: cp then changed and must be committed.
func (d *Driver) prepareClaim(ctx context.Context, snap *plugin.Snapshot, cp *checkpoint, claim *resourceapi.ResourceClaim) (_ *preparedClaim, released []types.UID, _ error) {
	if claim.Status.Allocation == nil {
		return nil, nil, errors.New("the claim is not allocated")
	}
	pc := &preparedClaim{Namespace: claim.Namespace, Name: claim.Name, Devices: []preparedDevice{}}
	for _, r := range claim.Status.Allocation.Devices.Results {
		if r.Driver != d.cfg.DriverName {
			continue
		}
		if r.Pool != d.pool {
			return nil, released, fmt.Errorf("device %s was allocated from pool %q, but this node's pool is %q", r.Device, r.Pool, d.pool)
		}
		dev, monitor, err := findDevice(snap, r.Device)
		switch {
		case errors.Is(err, errNotFound):
			return nil, released, fmt.Errorf("device %s is not on node %s any more (removed, or its driver is not running)", r.Device, d.pool)
		case err != nil:
			return nil, released, fmt.Errorf("device %s: %w", r.Device, err)
		case !dev.Healthy:
			return nil, released, fmt.Errorf("device %s (%s) is unhealthy: %s", r.Device, dev.ID, dev.Reason)
		}
		pd := preparedDevice{Request: r.Request, Pool: r.Pool, Device: r.Device, ID: dev.ID, Node: dev.Name, Index: dev.Index, ShareID: r.ShareID}
		switch admin := r.AdminAccess != nil && *r.AdminAccess; {
		case monitor:
			pd.Use, pd.Edits = useMonitor, dev.Monitor
		case admin:
			// Admin access is for monitoring tools: never the compute node,
			// which another claim may hold.
			if !dev.HasMonitor() {
				return nil, released, fmt.Errorf("admin access to device %s gives its monitor node only, and it has none", r.Device)
			}
			pd.Use, pd.Edits = useAdmin, dev.Monitor
		default:
			if uid, other, held := cp.holder(r.Device, claim.UID); held {
				why, stale := d.stale(ctx, uid, other, r)
				if !stale {
					return nil, released, fmt.Errorf("device %s (%s) is already prepared for claim %s: one holder at a time", r.Device, dev.ID, claimRef(other.Namespace, other.Name, uid))
				}
				d.log.Info("stale prepared claim released: its device was allocated again", "device", r.Device,
					"stale", claimRef(other.Namespace, other.Name, uid), "why", why, "for", claimRef(claim.Namespace, claim.Name, claim.UID))
				delete(cp.Claims, uid)
				released = append(released, uid)
			}
			for _, p := range pc.Devices {
				if p.Device == r.Device && p.Use == useCompute {
					return nil, released, fmt.Errorf("device %s is allocated twice to the claim", r.Device)
				}
			}
			pd.Use, pd.Edits = useCompute, dev.Compute
		}
		pc.Devices = append(pc.Devices, pd)
	}
	return pc, released, nil
}

// stale says whether the claim uid (other), which the checkpoint has
// holding device r exclusively, is no longer allocated that device by the
// API server: deleted (its pod is gone), replaced under its name, or
// deallocated. The scheduler gave the device to another claim only after
// that; kubelet unprepares such a claim late when it restarted while the
// pod went (it stays in kubelet's state until its pod cleanup), and waiting
// for it would keep the new pod from starting. A holder still allocated,
// or whose state cannot be read, is not stale.
func (d *Driver) stale(ctx context.Context, uid types.UID, other *preparedClaim, r resourceapi.DeviceRequestAllocationResult) (string, bool) {
	cur, err := d.cfg.Client.ResourceV1().ResourceClaims(other.Namespace).Get(ctx, other.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return "the claim was deleted", true
	case err != nil:
		d.log.Warn("cannot tell whether the device's holder is still allocated; keeping it", "device", r.Device,
			"holder", claimRef(other.Namespace, other.Name, uid), "err", err)
		return "", false
	case cur.UID != uid:
		return "the claim was deleted (a new one has its name)", true
	case !allocates(cur, r.Driver, r.Pool, r.Device):
		return "the claim no longer has the device allocated", true
	}
	return "", false // still allocated: a real conflict
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
