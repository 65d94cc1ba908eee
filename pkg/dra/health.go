package dra

import (
	"context"
	"time"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// healthReport is the health of every published device: each device's
// compute and monitor entries follow its health (with its reason as the
// message), and a device gone while a claim holds it is unhealthy.
func (d *Driver) healthReport(snap *plugin.Snapshot, held []gone, now time.Time) kubeletplugin.DeviceHealthReport {
	var rep kubeletplugin.DeviceHealthReport
	for _, e := range entries(snap, held, d.cfg.DriverName, d.cfg.MonitorClients) {
		h := kubeletplugin.DeviceHealth{
			PoolName: d.pool, DeviceName: e.dev.Name, Health: kubeletplugin.HealthStatusHealthy,
			LastUpdated: now, HealthCheckTimeout: healthTimeout, Message: e.message,
		}
		if !e.healthy {
			h.Health = kubeletplugin.HealthStatusUnhealthy
		}
		rep.Devices = append(rep.Devices, h)
	}
	return rep
}

// WatchHealthStatus streams device health to kubelet, which shows it in
// the pod status of every container holding a device
// (allocatedResourcesStatus, with the message): a report at once, one on
// every change of the devices or of the prepared claims, and one every
// healthResend in between, until ctx ends. Implements
// kubeletplugin.DRAPlugin.
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	t := time.NewTicker(healthResend)
	defer t.Stop()
	for {
		snap, changed := d.store.Load()
		held, claimsChanged := d.heldDevices(snap)
		select {
		case <-ctx.Done():
			return nil
		case reports <- d.healthReport(snap, held, time.Now()):
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-claimsChanged:
		case <-t.C:
		}
	}
}
