package cluster

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestCachedBuildAtomic: a build that fails halfway, or ends with a binary
// missing, leaves nothing that counts as cached (the next Up builds again);
// a complete build is renamed into place and not run again.
func TestCachedBuildAtomic(t *testing.T) {
	cache := t.TempDir()
	c := New(Options{CacheDir: cache, LogDir: t.TempDir(), Log: io.Discard})
	dir := filepath.Join(cache, "tool-v1")
	runs := 0
	build := func(script string) CachedBuild {
		return CachedBuild{What: "tool v1", Dir: dir, Names: []string{"a", "b"}, Log: "tool-build", Took: "no time",
			Cmd: func(ctx context.Context, tmp string) (*exec.Cmd, error) {
				runs++
				cmd := exec.CommandContext(ctx, "sh", "-c", script)
				cmd.Dir = tmp
				return cmd, nil
			}}
	}
	ctx := context.Background()
	for _, tc := range []struct{ name, script string }{
		{"fails after one binary", "printf x > a && chmod +x a && exit 1"},
		{"succeeds without b", "printf x > a && chmod +x a"},
		{"b not executable", "printf x > a && printf x > b && chmod +x a"},
	} {
		if built, err := c.Ensure(ctx, build(tc.script)); err == nil || built {
			t.Errorf("%s: built %v, err %v; want an error", tc.name, built, err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s: %s exists (%v): a partial build would count as cached", tc.name, dir, err)
		}
	}
	full := build("printf x > a && printf x > b && chmod +x a b")
	if built, err := c.Ensure(ctx, full); err != nil || !built {
		t.Fatalf("complete build: built %v, err %v", built, err)
	}
	if !haveAll(dir, []string{"a", "b"}) {
		t.Errorf("%s lacks the binaries after a complete build", dir)
	}
	if _, err := os.Stat(dir + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("%s.tmp left behind (%v)", dir, err)
	}
	before := runs
	if built, err := c.Ensure(ctx, full); err != nil || built || runs != before {
		t.Errorf("cached: built %v, err %v, build ran %d more times; want no build", built, err, runs-before)
	}
}
