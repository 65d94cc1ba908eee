package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel/devfsclient"
)

func runInfo(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("info", "info PATH...\n\nPrints the info of each device node as one JSON object per line.\n"+
		"A compute node (acN) is queried through its monitor node, so asking never takes the device.", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	enc := json.NewEncoder(stdout)
	var failed int
	for _, path := range fs.Args() {
		info, err := accel.ReadInfo(path)
		if err != nil {
			fmt.Fprintf(stderr, "accel-plugin info: %s: %v\n", path, err)
			failed++
			continue
		}
		if err := enc.Encode(info); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d node(s) could not be read", failed, fs.NArg())
	}
	return nil
}

func runList(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("list", "list --dir DIR", stderr)
	dir := fs.String("dir", "/run/accel/dev", "directory holding acN and acN_monitor nodes")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	indices, err := devfsclient.Nodes(*dir)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tDRIVER\tSERIAL\tMODEL\tSTATUS\tNUMA\tMEMORY USED/TOTAL\tCOMPUTE\tMONITORS\tRESETS\tJOBS\tBUSY")
	for _, i := range indices {
		info, err := accel.ReadInfo(filepath.Join(*dir, accel.ComputeName(i)))
		if err != nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\terror: %v\t\t\t\t\t\t\t\n", accel.ComputeName(i), err)
			continue
		}
		holder := "free"
		if info.ComputeInUse {
			holder = "pid " + strconv.Itoa(int(info.HolderPID))
		}
		jobs, busy := strconv.FormatUint(info.JobsCompleted, 10), info.BusyTime.Round(time.Microsecond).String()
		if info.NoJobAccounting { // an older daemon: not known
			jobs, busy = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%.1f/%.1f GiB\t%s\t%d\t%d\t%s\t%s\n", info.Name, info.Driver, info.Serial, info.Model, info.Status,
			info.NUMANode, float64(info.MemoryUsed)/(1<<30), float64(info.MemoryTotal)/(1<<30), holder,
			info.MonitorClients, info.ResetCount, jobs, busy)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(indices) == 0 {
		fmt.Fprintf(stderr, "no accel devices in %s\n", *dir)
	}
	return nil
}

func runEvents(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("events", "events --dir DIR [--count N]", stderr)
	dir := fs.String("dir", "/run/accel/dev", "directory a running \"accel-plugin sim\" serves")
	count := fs.Int("count", 0, "exit after this many events (0: until interrupted)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	f, err := os.Open(filepath.Join(*dir, devfsclient.SysDir, devfsclient.EventsFile))
	if err != nil {
		return fmt.Errorf("open event stream (is `accel-plugin sim --dir %s` running?): %w", *dir, err)
	}
	defer f.Close()
	fmt.Fprintf(stderr, "watching %s for device events\n", *dir)
	sc := bufio.NewScanner(f)
	for n := 0; *count == 0 || n < *count; n++ {
		if !sc.Scan() {
			if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read events: %w", err)
			}
			return nil
		}
		fmt.Fprintln(stdout, sc.Text())
	}
	return nil
}
