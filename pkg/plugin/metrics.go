package plugin

import (
	"context"
	"time"

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
	devices       *deviceCollector
}

// infoSource reads a device's dynamic facts at scrape time, bounded by ctx
// and by its daemon's gate.
type infoSource interface {
	scrapeInfo(ctx context.Context, d Device) (accel.Info, error)
}

// NewMetrics registers the plugin's metrics and the Go runtime's. A scrape
// reads each device's dynamic facts for at most scrapeTimeout in all.
func NewMetrics(store *Store, scrapeTimeout time.Duration) *Metrics {
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
	m.devices = &deviceCollector{store: store, timeout: scrapeTimeout, sources: map[string]infoSource{}}
	m.Registry.MustRegister(m.allocations, m.registrations, m.updates, m.devices,
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
	readableDesc = prometheus.NewDesc("accel_device_info_readable",
		"1 if this scrape read the device's dynamic facts (compute_in_use, monitor_clients, memory_used) through its monitor node; "+
			"0 if it could not (daemon not responding or dead, node missing): those series are then absent for the device.",
		[]string{"id", "device"}, nil)
)

// deviceCollector reports the devices of the current snapshot. A scrape
// reads dynamic facts through each device's source (so through its
// daemon's gate) within timeout in all; a device it cannot read is
// reported as unreadable, and the scrape still returns in time.
type deviceCollector struct {
	store   *Store
	timeout time.Duration
	sources map[string]infoSource // by Device.Source; set before serving
}

func (c *deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{devicesDesc, statusDesc, healthyDesc, computeDesc, monitorDesc, memoryDesc, readableDesc} {
		ch <- d
	}
}

// gauge sends one sample; a sample whose labels Prometheus refuses is
// dropped rather than failing the scrape (sources make labels safe, so this
// is defence only).
func gauge(ch chan<- prometheus.Metric, desc *prometheus.Desc, v float64, labels ...string) {
	if m, err := prometheus.NewConstMetric(desc, prometheus.GaugeValue, v, labels...); err == nil {
		ch <- m
	}
}

func (c *deviceCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	snap, _ := c.store.Load()
	healthy := 0
	for _, d := range snap.Devices {
		b := 0.0
		if d.Healthy {
			b = 1
			healthy++
		}
		gauge(ch, healthyDesc, b, d.ID, d.Name)
		for _, st := range []accel.Status{accel.StatusOperational, accel.StatusInReset, accel.StatusMalfunction, accel.StatusNeedsReset, accel.StatusRemoved} {
			v := 0.0
			if d.Status == st {
				v = 1
			}
			gauge(ch, statusDesc, v, d.ID, d.Name, st.String())
		}
		src, ok := c.sources[d.Source]
		if !ok {
			continue // a source without an info query (the kernel's)
		}
		info, err := src.scrapeInfo(ctx, d)
		if err != nil {
			gauge(ch, readableDesc, 0, d.ID, d.Name)
			continue // never report stale numbers, or another device's
		}
		gauge(ch, readableDesc, 1, d.ID, d.Name)
		inUse := 0.0
		if info.ComputeInUse {
			inUse = 1
		}
		gauge(ch, computeDesc, inUse, d.ID, d.Name)
		gauge(ch, monitorDesc, float64(max(int(info.MonitorClients)-1, 0)), d.ID, d.Name)
		gauge(ch, memoryDesc, float64(info.MemoryUsed), d.ID, d.Name)
	}
	gauge(ch, devicesDesc, float64(healthy), "healthy")
	gauge(ch, devicesDesc, float64(len(snap.Devices)-healthy), "unhealthy")
}
