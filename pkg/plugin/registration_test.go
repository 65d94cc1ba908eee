package plugin

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Stopping a server must not delete a successor's socket at the same path,
// and a live socket of another process is not taken over.
func TestEndpointLeavesOtherSocketsAlone(t *testing.T) {
	dir := t.TempDir()
	res := NewComputeResource("accel.io", NewStore(nil), testLogger(t))
	path := filepath.Join(dir, res.SocketName())
	wake := make(chan struct{}, 1)
	srv, err := serveAt(path, res, testLogger(t), wake)
	if err != nil {
		t.Fatal(err)
	}
	// A successor replaces the socket while we still run.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	succ, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Close()
	succID := socketInode(path)
	srv.stop(testLogger(t), path, true)
	if id := socketInode(path); id != succID {
		t.Fatalf("stopping the old server removed or changed the successor's socket (id %x → %x)", succID, id)
	}
	// A second server does not take over the live socket...
	if _, err := serveAt(path, res, testLogger(t), wake); err == nil || !strings.Contains(err.Error(), "served by another process") {
		t.Fatalf("serve over a live socket: %v", err)
	}
	// ...but replaces a stale one.
	succ.(*net.UnixListener).SetUnlinkOnClose(false)
	succ.Close()
	srv2, err := serveAt(path, res, testLogger(t), wake)
	if err != nil {
		t.Fatalf("serve over a stale socket: %v", err)
	}
	srv2.stop(testLogger(t), path, true)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("our own socket was not removed on shutdown: %v", err)
	}
}

func TestSocketIdentityIgnoresChmod(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	id := socketInode(path)
	if id == 0 {
		t.Fatal("no identity for a socket")
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if socketInode(path) != id {
		t.Fatal("chmod changed the socket's identity")
	}
	if socketInode(filepath.Dir(path)) != 0 {
		t.Fatal("a directory has a socket identity")
	}
}

// kubelet removes kubelet.sock and listens again microseconds later; on
// ext4 the new socket gets the old inode number and birth time (12137fa
// took it for the same socket, so the same kubelet). The identity must
// still differ. (t.TempDir is on the file system of $TMPDIR.)
func TestSocketIdentitySeesImmediateReplacement(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.sock")
	for i := range 20 {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		before := socketInode(path)
		l.Close() // unlinks
		l, err = net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		after := socketInode(path)
		l.Close()
		if before == 0 || before == after {
			t.Fatalf("round %d: identity %x before and %x after the socket was replaced", i, before, after)
		}
	}
}
