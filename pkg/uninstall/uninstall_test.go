package uninstall

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestUninstalling(t *testing.T) {
	ds := Ref{"kube-system", "accel-device-plugin"}
	now := metav1.Now()
	running := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ds.Namespace, Name: ds.Name}}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "daemonsets"}, ds.Name, errors.New("no"))
	for _, tc := range []struct {
		name              string
		objects           []runtime.Object // at stop; at start the DaemonSet runs unless startErr
		startErr, stopErr error
		want              bool
		wantErr           string
	}{
		{name: "running: a restart or an update", objects: []runtime.Object{running}},
		{name: "gone: helm uninstall (background deletion)", want: true},
		{name: "being deleted: foreground deletion", want: true, objects: []runtime.Object{&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{
			Namespace: ds.Namespace, Name: ds.Name, DeletionTimestamp: &now, Finalizers: []string{"foregroundDeletion"}}}}},
		{name: "another namespace's DaemonSet does not count", want: true, objects: []runtime.Object{&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: ds.Name}}}},
		{name: "refused now, allowed at start: the RBAC went with the release", stopErr: forbidden, want: true},
		{name: "refused now, and at start: do not know", startErr: forbidden, stopErr: forbidden, wantErr: "needs get"},
		// The pod's bound token dies with the pod: a forced delete of the pod
		// (grace 0) looks just like a deleted ServiceAccount. Keep the state.
		{name: "unauthorized now (pod force-deleted, or ServiceAccount deleted): do not know", stopErr: apierrors.NewUnauthorized("token"), wantErr: "token"},
		{name: "unreachable: do not know", stopErr: errors.New("connection refused"), wantErr: "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientset(running)
			if tc.startErr != nil {
				c.PrependReactor("get", "daemonsets", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, tc.startErr })
			}
			k := NewCheck(c, ds)
			if err := k.Start(context.Background()); (err != nil) != (tc.startErr != nil) {
				t.Fatalf("Start = %v", err)
			}
			c = fake.NewClientset(tc.objects...)
			if tc.stopErr != nil {
				c.PrependReactor("get", "daemonsets", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, tc.stopErr })
			}
			k.client = c
			got, err := k.Uninstalling(context.Background())
			if got != tc.want || (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Uninstalling = %v, %v; want %v, error containing %q", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseRef(t *testing.T) {
	if r, err := ParseRef("kube-system/accel-device-plugin"); err != nil || r != (Ref{"kube-system", "accel-device-plugin"}) || r.String() != "kube-system/accel-device-plugin" {
		t.Errorf("ParseRef = %+v, %v", r, err)
	}
	for _, bad := range []string{"", "name", "/name", "ns/", "a/b/c"} {
		if _, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q) accepted", bad)
		}
	}
}

// The race measured on kind: helm deletes the DaemonSet, then the
// ServiceAccount, and the pod's SIGTERM comes after its token is refused.
// The deletion the watch saw still makes it an uninstall.
func TestWatchedDeletionWins(t *testing.T) {
	ds := Ref{"kube-system", "accel-device-plugin"}
	c := fake.NewClientset(&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ds.Namespace, Name: ds.Name}})
	watching := make(chan struct{})
	c.PrependWatchReactor("daemonsets", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := c.Tracker().Watch(a.GetResource(), a.GetNamespace())
		close(watching)
		return true, w, err
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k := NewCheck(c, ds)
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	<-watching
	if err := c.AppsV1().DaemonSets(ds.Namespace).Delete(ctx, ds.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !k.deleted.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the watch did not see the deletion within 10s")
		}
		time.Sleep(time.Millisecond) // waiting on the watch goroutine's flag
	}
	c.PrependReactor("get", "daemonsets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewUnauthorized("token")
	})
	if got, err := k.Uninstalling(ctx); !got || err != nil {
		t.Fatalf("Uninstalling after a watched deletion, token refused = %v, %v; want true", got, err)
	}
}
