package devfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/accel"
)

// Control sends one command to the simulator serving dir and returns its
// result line. A failed command returns the simulator's own message.
func Control(dir, command string) (string, error) {
	path := filepath.Join(dir, SysDir, ControlFile)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s: no simulator control file (is `accel-plugin sim --dir %s` running?)", path, dir)
		}
		return "", fmt.Errorf("open control file: %w", err)
	}
	defer f.Close()
	_, werr := f.Write([]byte(command))
	out, rerr := io.ReadAll(f)
	msg := strings.TrimSpace(string(out))
	if werr != nil {
		if m, ok := strings.CutPrefix(msg, "error: "); ok {
			return "", errors.New(m)
		}
		return "", fmt.Errorf("control %q: %w", command, werr)
	}
	if rerr != nil {
		return "", fmt.Errorf("read control result: %w", rerr)
	}
	return msg, nil
}

// Nodes lists the device indices that have nodes in dir, in order.
func Nodes(dir string) ([]int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	seen := map[int]bool{}
	var out []int
	for _, e := range entries {
		if i, _, ok := accel.ParseNodeName(e.Name()); ok && !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	sort.Ints(out)
	return out, nil
}
