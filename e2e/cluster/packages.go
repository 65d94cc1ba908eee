package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// debPackages are the Debian packages the cluster runs on (containerd is
// built from its module: ensureContainerd).
var debPackages = []string{"etcd-server", "runc", "containernetworking-plugins", "busybox-static", "iptables", "iproute2", "util-linux"}

// missingPackages returns the packages dpkg does not report installed.
func missingPackages(ctx context.Context, pkgs []string) []string {
	var missing []string
	for _, pkg := range pkgs {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}", pkg).Output()
		if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), " installed") {
			missing = append(missing, pkg)
		}
	}
	return missing
}

// installPackages installs the missing debPackages.
func (c *Cluster) installPackages(ctx context.Context) error {
	return c.InstallPackages(ctx, debPackages...)
}

// InstallPackages installs those of pkgs that are missing with apt-get.
// Services the packages ship (etcd, docker) are kept from starting with a
// temporary policy-rc.d when none exists.
func (c *Cluster) InstallPackages(ctx context.Context, pkgs ...string) error {
	missing := missingPackages(ctx, pkgs)
	if len(missing) == 0 {
		return nil
	}
	c.logf("installing %s", strings.Join(missing, " "))
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); os.IsNotExist(err) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err == nil {
			defer os.Remove(policy)
		}
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		if err != nil {
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			return fmt.Errorf("apt-get %s: %w: %s", strings.Join(args, " "), err, lines[len(lines)-1])
		}
		return nil
	}
	install := append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)
	if err := run(install...); err != nil {
		if uerr := run("update", "-qq"); uerr != nil {
			return fmt.Errorf("%w (and %w)", err, uerr)
		}
		if err := run(install...); err != nil {
			return fmt.Errorf("%w: install them as root: apt-get install %s", err, strings.Join(missing, " "))
		}
	}
	if m := missingPackages(ctx, pkgs); len(m) > 0 {
		return fmt.Errorf("packages still missing after apt-get: %s", strings.Join(m, " "))
	}
	return nil
}
