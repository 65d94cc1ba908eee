package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
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
	holderDesc = prometheus.NewDesc("accel_device_holder",
		"1 for each container kubelet gave the device to (its pod-resources API, asked at scrape time), by use (compute, monitor): "+
			"join on id to label a device's metrics with the pod that holds it.",
		[]string{"id", "device", "namespace", "pod", "container", "use"}, nil)
	infoDesc = prometheus.NewDesc("accel_device_info",
		"1 for each device, with its driver and model: on a node with several drivers or models, join on id to tell devices apart.",
		[]string{"id", "device", "driver", "model"}, nil)
	jobsDesc = prometheus.NewDesc("accel_device_jobs_completed_total",
		"Jobs the device finished, from its info (the simulated drivers' job engine; the info carries 32 bits, so the count wraps at 2^32).",
		[]string{"id", "device"}, nil)
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
	// telemetryBusy is set while kernel telemetry is being read.
	telemetryBusy atomic.Bool
	// holders says which containers hold which devices (nil: not asked).
	holders holderSource
	// holdersErr is the last error asking it, logged once per change
	// (scrapes may run at once: under mu).
	mu         sync.Mutex
	holdersErr string
	log        *slog.Logger
}

// holderSource is kubelet's pod-resources API (*PodResources).
type holderSource interface {
	Holders(ctx context.Context, snap *Snapshot) (map[string][]Holder, error)
}

func (c *deviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{devicesDesc, statusDesc, healthyDesc, computeDesc, monitorDesc, memoryDesc, readableDesc, holderDesc, infoDesc, jobsDesc} {
		ch <- d
	}
	for _, m := range kernelMetricDescs {
		ch <- m.desc
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

// counter is gauge for a counter.
func counter(ch chan<- prometheus.Metric, desc *prometheus.Desc, v float64, labels ...string) {
	if m, err := prometheus.NewConstMetric(desc, prometheus.CounterValue, v, labels...); err == nil {
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
		gauge(ch, infoDesc, 1, d.ID, d.Name, d.Driver, d.Model)
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
		if !info.NoJobAccounting { // an older daemon: not known, rather than a counter stuck at 0
			counter(ch, jobsDesc, float64(info.JobsCompleted), d.ID, d.Name)
			counter(ch, busyMetric.desc, info.BusyTime.Seconds(), d.ID, d.Name)
		}
	}
	c.kernelTelemetry(ctx, ch, snap.Devices)
	c.holderMetrics(ctx, ch, snap)
	gauge(ch, devicesDesc, float64(healthy), "healthy")
	gauge(ch, devicesDesc, float64(len(snap.Devices)-healthy), "unhealthy")
}

// kernelMetricDesc is a metric fed by kernel drivers' telemetry
// attributes (kernelDrivers): a counter or a gauge, labelled by device and,
// where a driver has several attributes for it, by what tells them apart.
type kernelMetricDesc struct {
	desc      *prometheus.Desc
	valueType prometheus.ValueType
	kinds     bool // labelled by kernelMetric.kind
}

func newKernelMetric(name, help string, vt prometheus.ValueType, kindLabel string) *kernelMetricDesc {
	labels := []string{"id", "device"}
	if kindLabel != "" {
		labels = append(labels, kindLabel)
	}
	return &kernelMetricDesc{desc: prometheus.NewDesc(name, help, labels, nil), valueType: vt, kinds: kindLabel != ""}
}

var (
	resetsMetric = newKernelMetric("accel_device_resets_total",
		"Resets the kernel driver counted since it bound the device (habanalabs hard_reset_cnt, soft_reset_cnt), by kind.",
		prometheus.CounterValue, "kind")
	errorsMetric = newKernelMetric("accel_device_errors_total",
		"Hardware errors the device reported to its kernel driver (qaic ce_count, ue_count, ue_nonfatal_count), by kind.",
		prometheus.CounterValue, "kind")
	busyMetric = newKernelMetric("accel_device_busy_seconds_total",
		"Time the device was busy: running jobs, as the simulated drivers' info reports it (busy_ns), or as its kernel driver counts it (ivpu npu_busy_time_us).",
		prometheus.CounterValue, "")
	clockMetric = newKernelMetric("accel_device_clock_hertz",
		"Device clock frequency from its kernel driver (habanalabs clk_cur_freq_mhz, clk_max_freq_mhz; ivpu npu_current_frequency_mhz, npu_max_frequency_mhz), by which.",
		prometheus.GaugeValue, "which")
	powerMetric = newKernelMetric("accel_device_power_watts",
		"Device power figure from its kernel driver (habanalabs max_power: the limit), by which.",
		prometheus.GaugeValue, "which")
	memoryUsedMetric = &kernelMetricDesc{desc: memoryDesc, valueType: prometheus.GaugeValue}

	kernelMetricDescs = []*kernelMetricDesc{resetsMetric, errorsMetric, busyMetric, clockMetric, powerMetric}
)

// kernelSample is one telemetry value read from sysfs.
type kernelSample struct {
	m      kernelMetric
	id     string
	device string
	value  float64
}

// readTelemetry reads the telemetry attributes of the kernel devices
// among devs. An attribute the device does not have (an older kernel, a
// model without it) or that does not hold a number is left out.
func readTelemetry(devs []Device) []kernelSample {
	var out []kernelSample
	for _, d := range devs {
		if d.sysDevice == "" {
			continue
		}
		for _, m := range kernelDrivers[d.Driver].telemetry {
			v, ok := attr(d.sysDevice, m.file)
			if !ok {
				continue
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				continue
			}
			out = append(out, kernelSample{m: m, id: d.ID, device: d.Name, value: f * m.scale})
		}
	}
	return out
}

// kernelTelemetry sends the kernel devices' telemetry, read within ctx: a
// driver attribute that asks the device's firmware (habanalabs' clocks and
// power) can block, so the reads run aside and a scrape that outlives
// them reports none; while one is stuck, later scrapes do not start
// another.
func (c *deviceCollector) kernelTelemetry(ctx context.Context, ch chan<- prometheus.Metric, devs []Device) {
	if !c.telemetryBusy.CompareAndSwap(false, true) {
		return
	}
	done := make(chan []kernelSample, 1)
	go func() {
		defer c.telemetryBusy.Store(false)
		done <- readTelemetry(devs)
	}()
	select {
	case samples := <-done:
		for _, s := range samples {
			labels := []string{s.id, s.device}
			if s.m.metric.kinds {
				labels = append(labels, s.m.kind)
			}
			if m, err := prometheus.NewConstMetric(s.m.metric.desc, s.m.metric.valueType, s.value, labels...); err == nil {
				ch <- m
			}
		}
	case <-ctx.Done():
	}
}

// holderMetrics reports who holds each device, as kubelet says within ctx;
// a kubelet that does not answer costs the scrape these series only, and
// is logged once until the error changes.
func (c *deviceCollector) holderMetrics(ctx context.Context, ch chan<- prometheus.Metric, snap *Snapshot) {
	if c.holders == nil {
		return
	}
	holders, err := c.holders.Holders(ctx, snap)
	c.mu.Lock()
	if msg := fmt.Sprint(err); err != nil && msg != c.holdersErr && c.log != nil {
		c.log.Warn("cannot ask kubelet who holds the devices: accel_device_holder is left out", "err", err)
	}
	c.holdersErr = fmt.Sprint(err)
	c.mu.Unlock()
	for _, d := range snap.Devices {
		for _, h := range holders[d.ID] {
			gauge(ch, holderDesc, 1, d.ID, d.Name, h.Namespace, h.Pod, h.Container, h.Use)
		}
	}
}
