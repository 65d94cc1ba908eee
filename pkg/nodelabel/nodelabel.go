// Package nodelabel keeps labels describing a node's accel devices on its
// Node object, so schedulers and people can select nodes by them:
//
//	<prefix>/ac.present    "true" or "false"
//	<prefix>/ac.count      number of devices (healthy or not)
//	<prefix>/ac.model      the devices' model (the most common one), as a label value
//	<prefix>/ac.drivers    the devices' drivers, sorted and joined by ".", e.g.
//	                       "fakedev.fakenpu" on a node with both simulated drivers
//	                       (names past 63 characters in all are left out whole)
//	<prefix>/ac.simulated  "true" if any device is simulated
//
// It patches only these keys (a JSON merge patch), never other labels, and
// removes them on shutdown.
package nodelabel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// Labeler keeps the labels of one Node current with a device store.
type Labeler struct {
	Client kubernetes.Interface
	Node   string // the Node's name (from the downward API)
	Prefix string // e.g. "accel.io"
	Store  *plugin.Store
	Logger *slog.Logger
	// Timeout bounds one API call (0: 10 s).
	Timeout time.Duration
}

const (
	retryMin = 200 * time.Millisecond
	retryMax = 30 * time.Second
)

// Keys returns the label keys the labeler owns.
func (l *Labeler) Keys() []string {
	return []string{l.Prefix + "/ac.present", l.Prefix + "/ac.count", l.Prefix + "/ac.model", l.Prefix + "/ac.drivers", l.Prefix + "/ac.simulated"}
}

// Check verifies that the Node exists and can be read, with an error that
// says what to fix.
func (l *Labeler) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, l.timeout())
	defer cancel()
	_, err := l.Client.CoreV1().Nodes().Get(ctx, l.Node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%w: node %q not found (set --node-name from the downward API spec.nodeName)", ErrMisconfigured, l.Node)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w: reading node %q is forbidden: the service account needs get and patch on nodes: %w", ErrMisconfigured, l.Node, err)
	case err != nil:
		return fmt.Errorf("get node %q: %w", l.Node, err)
	}
	return nil
}

// Run labels the Node whenever the devices change, retrying failed patches
// with backoff, until ctx ends; then it removes its labels.
func (l *Labeler) Run(ctx context.Context) error {
	log := l.Logger.With("node", l.Node)
	var applied map[string]string
	backoff := retryMin
	var retry <-chan time.Time
	for {
		snap, changed := l.Store.Load()
		want := Labels(l.Prefix, snap.Devices)
		if snap.Version > 0 && !maps.Equal(want, applied) { // version 0: discovery has not reported
			if err := l.patch(ctx, want); err != nil {
				if ctx.Err() != nil {
					break
				}
				log.Warn("cannot label node; retrying", "err", err, "retry_in", backoff)
				retry = time.After(backoff)
				backoff = min(2*backoff, retryMax)
			} else {
				log.Info("node labels updated", "labels", want)
				applied, backoff, retry = want, retryMin, nil
			}
		}
		select {
		case <-ctx.Done():
		case <-changed:
			continue
		case <-retry:
			continue
		}
		break
	}
	// Remove our labels with a context of its own: ctx has ended.
	cctx, cancel := context.WithTimeout(context.Background(), l.timeout())
	defer cancel()
	remove := map[string]*string{}
	for _, k := range l.Keys() {
		remove[k] = nil
	}
	if err := l.apply(cctx, remove); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove node labels: %w", err)
	}
	log.Info("node labels removed")
	return nil
}

func (l *Labeler) timeout() time.Duration {
	if l.Timeout > 0 {
		return l.Timeout
	}
	return 10 * time.Second
}

// patch sets the owned labels to want, deleting owned labels not in want.
func (l *Labeler) patch(ctx context.Context, want map[string]string) error {
	set := map[string]*string{}
	for _, k := range l.Keys() {
		set[k] = nil
	}
	for k, v := range want {
		set[k] = &v
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout())
	defer cancel()
	return l.apply(ctx, set)
}

// apply sends a JSON merge patch of labels (nil values delete).
func (l *Labeler) apply(ctx context.Context, labels map[string]*string) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return err
	}
	_, err = l.Client.CoreV1().Nodes().Patch(ctx, l.Node, types.MergePatchType, body, metav1.PatchOptions{FieldManager: "accel-plugin"})
	if err != nil {
		return fmt.Errorf("patch node %q: %w", l.Node, err)
	}
	return nil
}

// Labels computes the owned labels for a set of devices.
func Labels(prefix string, devices []plugin.Device) map[string]string {
	models := map[string]int{}
	drivers := map[string]bool{}
	simulated := false
	for _, d := range devices {
		models[d.Model]++
		if v := LabelValue(d.Driver); v != "" {
			drivers[v] = true
		}
		simulated = simulated || d.Simulated
	}
	model, best := "", 0
	for m, n := range models {
		if n > best || (n == best && m < model) {
			model, best = m, n
		}
	}
	out := map[string]string{
		prefix + "/ac.present":   strconv.FormatBool(len(devices) > 0),
		prefix + "/ac.count":     strconv.Itoa(len(devices)),
		prefix + "/ac.simulated": strconv.FormatBool(simulated),
	}
	if v := LabelValue(model); v != "" {
		out[prefix+"/ac.model"] = v
	}
	if v := joinWhole(slices.Sorted(maps.Keys(drivers))); v != "" {
		out[prefix+"/ac.drivers"] = v
	}
	return out
}

// joinWhole joins label values with "." up to a label value's 63
// characters, leaving out whole names that do not fit rather than cutting
// one into a name no driver has.
func joinWhole(names []string) string {
	var b strings.Builder
	for _, n := range names {
		if b.Len() > 0 && b.Len()+1+len(n) <= 63 {
			b.WriteByte('.')
			b.WriteString(n)
		} else if b.Len() == 0 {
			b.WriteString(n) // a LabelValue: 63 characters at most
		}
	}
	return b.String()
}

var (
	invalidRun = regexp.MustCompile(`[^A-Za-z0-9._-]+`)
	edges      = regexp.MustCompile(`^[^A-Za-z0-9]+|[^A-Za-z0-9]+$`)
)

// LabelValue turns s into a valid label value: runs of other characters
// become "_", at most 63 characters, starting and ending alphanumeric.
// "Simulated Accel SA-1" becomes "Simulated_Accel_SA-1".
func LabelValue(s string) string {
	v := invalidRun.ReplaceAllString(s, "_")
	v = edges.ReplaceAllString(v, "")
	if len(v) > 63 {
		v = edges.ReplaceAllString(v[:63], "")
	}
	return v
}

// RemoveAll removes the labels owned under prefix from every node that has
// any of them (what a chart's post-delete hook runs, as the plugin's own
// removal races with the deletion of its RBAC). It returns how many nodes
// it changed.
func RemoveAll(ctx context.Context, client kubernetes.Interface, prefix string, log *slog.Logger) (int, error) {
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("list nodes: %w", err)
	}
	changed := 0
	for _, n := range nodes.Items {
		l := &Labeler{Client: client, Node: n.Name, Prefix: prefix}
		remove := map[string]*string{}
		for _, k := range l.Keys() {
			if _, ok := n.Labels[k]; ok {
				remove[k] = nil
			}
		}
		if len(remove) == 0 {
			continue
		}
		if err := l.apply(ctx, remove); err != nil && !apierrors.IsNotFound(err) {
			return changed, err
		}
		log.Info("node labels removed", "node", n.Name)
		changed++
	}
	return changed, nil
}

// ErrMisconfigured marks Check errors that waiting will not fix (a wrong
// node name, missing RBAC), as opposed to an API server that is down.
var ErrMisconfigured = errors.New("node labeling misconfigured")

// ErrNoNodeName is returned when labeling is asked for without a node name.
var ErrNoNodeName = errors.New("--label-node needs --node-name (or the NODE_NAME environment variable from the downward API)")
