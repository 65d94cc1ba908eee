package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// kernelDriver is what the plugin uses of one kernel accel driver. Every
// entry comes from the driver's source in drivers/accel/ (the README's
// kernel table names the file for each); a driver not listed is handled
// generically: PCI or platform identity, healthy while its node is a
// character device, no telemetry.
type kernelDriver struct {
	// status reads the device's status from its parent device directory
	// (/sys/class/accel/accelN/device). file is the attribute to poll for
	// changes the driver sends no event for ("" when events cover it).
	status func(parent string) (st accel.Status, reason, file, raw string)
	// control is the name of the driver's control node for accel index N
	// ("" for none): a second node, in the accel class, that answers only
	// the info query, for any number of clients. Compute users get it
	// beside accelN; monitor users share it.
	control func(index int) string
	// telemetry are the attributes read at scrape time.
	telemetry []kernelMetric
}

// kernelMetric is one telemetry attribute of a driver: the file below the
// parent device, which metric it feeds, the label value that tells it from
// the driver's other files feeding the same metric, and the factor that
// turns it into the metric's unit.
type kernelMetric struct {
	file   string
	metric *kernelMetricDesc
	kind   string
	scale  float64
}

// kernelDrivers are the drivers of drivers/accel/ by the name of the
// driver bound to their parent device (/sys/bus/*/drivers/NAME).
var kernelDrivers = map[string]kernelDriver{
	// drivers/accel/habanalabs/common/sysfs.c: status, reset counts, clocks,
	// power on the PCI device; device.c: the control node accel_controlD<N>,
	// N the accel index (cdev_sysfs_debugfs_add). No uevent on a status
	// change: status is polled.
	"habanalabs": {
		status: habanalabsStatus,
		control: func(index int) string {
			return fmt.Sprintf("accel_controlD%d", index)
		},
		telemetry: []kernelMetric{
			{"hard_reset_cnt", resetsMetric, "hard", 1},
			{"soft_reset_cnt", resetsMetric, "soft", 1}, // inference ASICs (Goya) only
			{"clk_cur_freq_mhz", clockMetric, "current", 1e6},
			{"clk_max_freq_mhz", clockMetric, "max", 1e6},
			{"max_power", powerMetric, "max", 1e-3}, // mW
		},
	},
	// drivers/accel/ivpu/ivpu_sysfs.c: busy time, memory, clocks on the PCI
	// device. A recovery sends change IVPU_PM_EVENT=IVPU_RECOVER on the PCI
	// device (ivpu_pm.c), which re-reads it; there is no status attribute.
	"intel_vpu": {
		telemetry: []kernelMetric{
			{"npu_busy_time_us", busyMetric, "", 1e-6},
			{"npu_memory_utilization", memoryUsedMetric, "", 1},
			{"npu_current_frequency_mhz", clockMetric, "current", 1e6},
			{"npu_max_frequency_mhz", clockMetric, "max", 1e6},
		},
	},
	// drivers/accel/qaic: the device is usable only while its firmware runs,
	// which its QAIC_CONTROL MHI channel device, bound, shows (qaic_drv.c
	// qaic_mhi_probe; the channel devices go on every reset); online and
	// offline uevents on accelN (qaic_notify_reset) and the channel's own
	// add/remove re-read it. qaic_ras.c: error counts on the PCI device.
	"qaic": {
		status: qaicStatus,
		telemetry: []kernelMetric{
			{"ce_count", errorsMetric, "correctable", 1},
			{"ue_count", errorsMetric, "uncorrectable", 1},
			{"ue_nonfatal_count", errorsMetric, "uncorrectable_nonfatal", 1},
		},
	},
	// drivers/accel/amdxdna (amdxdna_sysfs.c: vbnv, device_type,
	// fw_version), drivers/accel/rocket and drivers/accel/ethosu: no
	// status, no telemetry, no uevent of their own.
	"amdxdna": {},
	"rocket":  {},
	"ethosu":  {},
}

// kernelFacades maps the parent device of drivers that hang their accel
// device off a platform device of their own, which no driver binds, to
// the driver: rocket registers "rknn" for all NPU cores
// (drivers/accel/rocket/rocket_drv.c, platform_device_register_simple).
var kernelFacades = map[string]string{"rknn": "rocket"}

// habanalabsStatus maps habanalabs' status attribute (hl_device_status
// strings in common/device.c) to the core's statuses.
func habanalabsStatus(parent string) (accel.Status, string, string, string) {
	file := filepath.Join(parent, "status")
	raw, ok := attr(parent, "status")
	if !ok {
		return accel.StatusOperational, "", "", ""
	}
	st := kernelStatus(raw)
	reason := ""
	if st != accel.StatusOperational {
		reason = fmt.Sprintf("driver status %q", cleanText(raw))
	}
	return st, reason, file, raw
}

// kernelStatus maps a driver's status string to the core's statuses (the
// README's kernel table).
func kernelStatus(s string) accel.Status {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "operational":
		return accel.StatusOperational
	case "in reset", "in reset after device release", "in device creation":
		return accel.StatusInReset
	case "needs reset":
		return accel.StatusNeedsReset
	default: // "disabled" (the malfunction state), anything unknown
		return accel.StatusMalfunction
	}
}

// qaicStatus: operational while the QAIC_CONTROL channel of the device's
// MHI controller (device/mhiN/mhiN_QAIC_CONTROL) exists and is bound to
// qaic_mhi, whose probe negotiates the control protocol (a failed
// negotiation unbinds it); qaic_open answers ENODEV otherwise.
func qaicStatus(parent string) (accel.Status, string, string, string) {
	channels, _ := filepath.Glob(filepath.Join(parent, "mhi*", "mhi*_QAIC_CONTROL"))
	if len(channels) == 0 {
		return accel.StatusInReset, "firmware not running (no QAIC_CONTROL MHI channel)", "", ""
	}
	for _, ch := range channels {
		if _, err := os.Lstat(filepath.Join(ch, "driver")); err == nil {
			return accel.StatusOperational, "", "", ""
		}
	}
	return accel.StatusInReset, "QAIC_CONTROL MHI channel not bound to qaic_mhi (control protocol not negotiated)", "", ""
}
