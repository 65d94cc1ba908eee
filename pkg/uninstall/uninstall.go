// Package uninstall tells a stopping plugin whether its release is being
// uninstalled — its DaemonSet is gone or being deleted — rather than
// restarted, updated or evicted, so that it can remove host state that must
// otherwise outlive the process (the CDI specs: kubelet restarts containers
// of running pods with the CDI names it saved, so a plugin restart must
// leave them, but an uninstall should not).
//
// `helm uninstall` deletes the DaemonSet with background propagation: the
// object is gone before the garbage collector deletes its pods, so by the
// time a pod's container gets SIGTERM a GET answers NotFound. With
// foreground propagation the DaemonSet still exists, with a deletion
// timestamp, until its pods are gone. A rolling update, an eviction or a
// drain leaves the DaemonSet as it is.
package uninstall

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// ErrTokenRefused marks an Uninstalling answer of "do not know" because the
// pod's token was refused: an uninstall that deleted the ServiceAccount, or
// a force-deleted pod. A caller whose state is rebuilt at every start may
// take it as an uninstall; one that would lose state must not.
var ErrTokenRefused = errors.New("the token was refused")

// Ref names a DaemonSet, parsed from "NAMESPACE/NAME".
type Ref struct{ Namespace, Name string }

// ParseRef parses "NAMESPACE/NAME".
func ParseRef(s string) (Ref, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return Ref{}, fmt.Errorf("DaemonSet %q: want NAMESPACE/NAME", s)
	}
	return Ref{ns, name}, nil
}

func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// Check tells, when the plugin stops, whether its DaemonSet is gone or
// being deleted. Helm deletes the release's RBAC (and ServiceAccount) at
// the same moment as the DaemonSet, so by then the GET is often refused:
// a refusal (Forbidden) counts as "gone" if the same GET was allowed at
// start (what took the permission away is the uninstall), and as "do not
// know" otherwise. A refused token (Unauthorized) is always "do not know":
// it is also what a force-deleted pod sees.
//
// So that the answer does not hang on that race, Start also watches the
// DaemonSet: helm deletes it before the RBAC and the ServiceAccount, and a
// deletion the watch saw is an uninstall whatever the GET at the end is
// refused with. (Measured on kind: the DRA driver's pod got SIGTERM after
// its token was refused, kept its checkpoint, and TestDRA failed.)
type Check struct {
	client   kubernetes.Interface
	ds       Ref
	readable bool        // the GET worked at Start
	deleted  atomic.Bool // the watch saw the DaemonSet deleted or being deleted
}

// NewCheck returns a check of ds through client.
func NewCheck(client kubernetes.Interface, ds Ref) *Check { return &Check{client: client, ds: ds} }

// Start reads the DaemonSet once, to learn whether this process may, and
// watches it until ctx ends; an error says why not (the check will then
// keep the state at the end).
func (k *Check) Start(ctx context.Context) error {
	got, err := k.client.AppsV1().DaemonSets(k.ds.Namespace).Get(ctx, k.ds.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get DaemonSet %s: %w (needed to tell an uninstall from a restart)", k.ds, err)
	}
	k.readable = true
	go k.watch(ctx, k.client, got.ResourceVersion)
	return nil
}

// watch records a deletion of the DaemonSet until ctx ends. A watch that
// ends is started again after a GET (which tells a deletion the gap may
// have hidden); a refused GET ends it, as the check at the end then
// decides.
func (k *Check) watch(ctx context.Context, client kubernetes.Interface, rv string) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		w, err := client.AppsV1().DaemonSets(k.ds.Namespace).Watch(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("metadata.name", k.ds.Name).String(), ResourceVersion: rv})
		if err == nil {
			for ev := range w.ResultChan() {
				ds, _ := ev.Object.(*appsv1.DaemonSet)
				if ev.Type == watch.Deleted || (ds != nil && ds.DeletionTimestamp != nil) {
					k.deleted.Store(true)
					w.Stop()
					return
				}
			}
			w.Stop()
			backoff = 100 * time.Millisecond
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 30*time.Second)
		got, err := client.AppsV1().DaemonSets(k.ds.Namespace).Get(ctx, k.ds.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err) || (err == nil && got.DeletionTimestamp != nil):
			k.deleted.Store(true)
			return
		case err != nil && (apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err)):
			return
		case err == nil:
			rv = got.ResourceVersion
		}
	}
}

// Uninstalling reports whether the DaemonSet is gone or being deleted. An
// error (the API server unreachable, a permission never granted) means "do
// not know": the caller keeps its state.
func (k *Check) Uninstalling(ctx context.Context) (bool, error) {
	if k.deleted.Load() {
		return true, nil
	}
	got, err := k.client.AppsV1().DaemonSets(k.ds.Namespace).Get(ctx, k.ds.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case apierrors.IsForbidden(err) && k.readable:
		return true, nil // the release's RBAC went with it
	case apierrors.IsUnauthorized(err):
		// The pod's bound token is invalid once the pod object is gone: a
		// force-deleted pod (grace 0, a restart) looks just like a deleted
		// ServiceAccount (an uninstall). Wiping the state of a restart
		// would lose every prepared claim: do not know.
		return false, fmt.Errorf("get DaemonSet %s: %w: %w (a force-deleted pod or a deleted ServiceAccount)", k.ds, ErrTokenRefused, err)
	case apierrors.IsForbidden(err):
		return false, fmt.Errorf("get DaemonSet %s: %w (the service account needs get on it)", k.ds, err)
	case err != nil:
		return false, fmt.Errorf("get DaemonSet %s: %w", k.ds, err)
	}
	return got.DeletionTimestamp != nil, nil
}
