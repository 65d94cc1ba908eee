package plugin

import (
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Metrics are the plugin's Prometheus metrics, in a registry of their own
// (no global state). Counters count what the servers and the registrar do;
// the device gauges are read from the current snapshot, and compute and
// monitor use from the devices' info (through their monitor nodes) at
// scrape time, so nothing is polled between scrapes.
type Metrics struct {
	Registry *prometheus.Registry

	allocations   *prometheus.CounterVec
	registrations *prometheus.CounterVec
	updates       *prometheus.CounterVec
}

// NewMetrics registers the plugin's metrics and the Go runtime's.
func NewMetrics(store *Store, devDir string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "accel_plugin_allocations_total",
			Help: "Allocate calls from kubelet, per container request, by resource and result (ok, error).",
		}, []string{"resource", "result"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "accel_plugin_registrations_total",
			Help: "Registrations with kubelet, by resource and result (ok, error).",
		}, []string{"resource", "result"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "accel_plugin_list_and_watch_updates_total",
			Help: "Device lists sent to kubelet on ListAndWatch streams, by resource.",
		}, []string{"resource"}),
	}
	m.Registry.MustRegister(m.allocations, m.registrations, m.updates,
		&deviceCollector{store: store, devDir: devDir},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

func (m *Metrics) allocated(resource string, err error) {
	if m != nil {
		m.allocations.WithLabelValues(resource, result(err)).Inc()
	}
}

func (m *Metrics) registered(resource string, err error) {
	if m != nil {
		m.registrations.WithLabelValues(resource, result(err)).Inc()
	}
}

func (m *Metrics) sent(resource string) {
	if m != nil {
		m.updates.WithLabelValues(resource).Inc()
	}
}

var (
	devicesDesc = prometheus.NewDesc("accel_devices",
		"Devices known to the plugin, by health.", []string{"health"}, nil)
	statusDesc = prometheus.NewDesc("accel_device_status",
		"1 for the device's current status (operational, in_reset, malfunction, needs_reset, removed).",
		[]string{"id", "device", "status"}, nil)
	healthyDesc = prometheus.NewDesc("accel_device_healthy",
		"1 if the device is advertised as Healthy to kubelet.", []string{"id", "device"}, nil)
	computeDesc = prometheus.NewDesc("accel_device_compute_in_use",
		"1 if a process holds the device's compute node.", []string{"id", "device"}, nil)
	monitorDesc = prometheus.NewDesc("accel_device_monitor_clients",
		"Open monitor files of the device, not counting this scrape's own.", []string{"id", "device"}, nil)
	memoryDesc = prometheus.NewDesc("accel_device_memory_used_bytes",
		"Device memory in use.", []string{"id", "device"}, nil)
)

// deviceCollector reports the devices of the current snapshot.
type deviceCollector struct {
	store  *Store
	devDir string
}

func (c *deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{devicesDesc, statusDesc, healthyDesc, computeDesc, monitorDesc, memoryDesc} {
		ch <- d
	}
}

func (c *deviceCollector) Collect(ch chan<- prometheus.Metric) {
	snap, _ := c.store.Load()
	healthy := 0
	for _, d := range snap.Devices {
		b := 0.0
		if d.Healthy {
			b = 1
			healthy++
		}
		ch <- prometheus.MustNewConstMetric(healthyDesc, prometheus.GaugeValue, b, d.ID, d.Name)
		for _, st := range []accel.Status{accel.StatusOperational, accel.StatusInReset, accel.StatusMalfunction, accel.StatusNeedsReset, accel.StatusRemoved} {
			v := 0.0
			if d.Status == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(statusDesc, prometheus.GaugeValue, v, d.ID, d.Name, st.String())
		}
		if d.Kernel || c.devDir == "" {
			continue // the merged kernel has no info query
		}
		info, err := accel.ReadInfo(filepath.Join(c.devDir, d.Name))
		if err != nil || info.Serial != d.ID {
			continue // gone or replaced since the snapshot: skip, never report another device's numbers
		}
		inUse := 0.0
		if info.ComputeInUse {
			inUse = 1
		}
		ch <- prometheus.MustNewConstMetric(computeDesc, prometheus.GaugeValue, inUse, d.ID, d.Name)
		ch <- prometheus.MustNewConstMetric(monitorDesc, prometheus.GaugeValue, float64(max(int(info.MonitorClients)-1, 0)), d.ID, d.Name)
		ch <- prometheus.MustNewConstMetric(memoryDesc, prometheus.GaugeValue, float64(info.MemoryUsed), d.ID, d.Name)
	}
	ch <- prometheus.MustNewConstMetric(devicesDesc, prometheus.GaugeValue, float64(healthy), "healthy")
	ch <- prometheus.MustNewConstMetric(devicesDesc, prometheus.GaugeValue, float64(len(snap.Devices)-healthy), "unhealthy")
}
