package cluster

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// etcdURL is the address of etcd's client or peer port.
func etcdURL(port int) string { return "http://127.0.0.1:" + strconv.Itoa(port) }

// etcdArgs is etcd's command line: a single-member cluster on loopback,
// its data in StateDir.
func (c *Cluster) etcdArgs() []string {
	return []string{
		"--name=accel-e2e",
		"--data-dir=" + c.etcdData(),
		"--listen-client-urls=" + etcdURL(etcdClientPort),
		"--advertise-client-urls=" + etcdURL(etcdClientPort),
		"--listen-peer-urls=" + etcdURL(etcdPeerPort),
		"--initial-advertise-peer-urls=" + etcdURL(etcdPeerPort),
		"--initial-cluster=accel-e2e=" + etcdURL(etcdPeerPort),
		"--initial-cluster-state=new",
		"--log-level=warn",
		"--logger=zap",
	}
}

// waitEtcd waits for etcd's /health.
func (c *Cluster) waitEtcd(ctx context.Context) error {
	cl := &http.Client{Timeout: 2 * time.Second}
	return c.waitFor(ctx, "etcd", []string{compEtcd}, 60*time.Second, 100*time.Millisecond, func(ctx context.Context) error {
		resp, err := cl.Get(etcdURL(etcdClientPort) + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
}
