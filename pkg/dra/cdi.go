package dra

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/accel-device-plugin/accel-device-plugin/pkg/plugin"
)

// ClaimClass is the CDI class of the claim specs: a prepared claim's CDI
// devices are <domain>/claim=<claim UID>-<request>.
const ClaimClass = "claim"

// claimSpecs writes one CDI spec per prepared claim (a transient spec,
// named after the claim's UID, so a name is never reused for another
// claim and no runtime cache can hand out a stale one), with one CDI
// device per request: the edits of every device allocated for it, and the
// env variables that list them (ACCEL_VISIBLE_DEVICES, ACCEL_MONITOR_DEVICES)
// exactly as the device plugin sets them.
type claimSpecs struct {
	dir    string
	vendor string
	cache  *cdi.Cache
}

// newClaimSpecs returns the writer of domain's claim specs in dir.
func newClaimSpecs(dir, domain string) (*claimSpecs, error) {
	if err := parser.ValidateVendorName(domain); err != nil {
		return nil, fmt.Errorf("driver name %q as a CDI vendor: %w", domain, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("CDI spec directory: %w", err)
	}
	c, err := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("CDI spec directory %s: %w", dir, err)
	}
	return &claimSpecs{dir: dir, vendor: domain, cache: c}, nil
}

func (s *claimSpecs) kind() string { return s.vendor + "/" + ClaimClass }

// fileName is the claim's spec file name, e.g.
// accel.io-claim_<UID>.json (JSON, as the device plugin's specs: the
// library's default would be YAML).
func (s *claimSpecs) fileName(uid types.UID) string {
	return cdi.GenerateTransientSpecName(s.vendor, ClaimClass, string(uid)) + ".json"
}

// cdiDeviceName is the CDI device name of one request of a claim: UID and
// request ("/" of a subrequest becomes "_", which request names never hold).
func cdiDeviceName(uid types.UID, request string) string {
	return string(uid) + "-" + strings.ReplaceAll(request, "/", "_")
}

// qualified is the fully qualified CDI name of one request of a claim.
func (s *claimSpecs) qualified(uid types.UID, request string) string {
	return parser.QualifiedName(s.vendor, ClaimClass, cdiDeviceName(uid, request))
}

// spec renders the claim's spec: one CDI device per request, in the order
// of the requests' first devices.
func (s *claimSpecs) spec(uid types.UID, pc *preparedClaim) (*cdispec.Spec, error) {
	spec := &cdispec.Spec{Kind: s.kind()}
	var requests []string
	byRequest := map[string][]preparedDevice{}
	for _, d := range pc.Devices {
		if _, ok := byRequest[d.Request]; !ok {
			requests = append(requests, d.Request)
		}
		byRequest[d.Request] = append(byRequest[d.Request], d)
	}
	for _, r := range requests {
		devs := slices.Clone(byRequest[r])
		slices.SortStableFunc(devs, func(a, b preparedDevice) int { return a.Index - b.Index })
		var edits cdispec.ContainerEdits
		env := map[string][]string{}
		var envOrder []string
		for _, d := range devs {
			e := d.Edits.CDI()
			edits.DeviceNodes = append(edits.DeviceNodes, e.DeviceNodes...)
			edits.Mounts = append(edits.Mounts, e.Mounts...)
			if d.Edits.Env == "" {
				continue
			}
			if _, ok := env[d.Edits.Env]; !ok {
				envOrder = append(envOrder, d.Edits.Env)
			}
			if !slices.Contains(env[d.Edits.Env], d.Node) {
				env[d.Edits.Env] = append(env[d.Edits.Env], d.Node)
			}
		}
		for _, k := range envOrder {
			edits.Env = append(edits.Env, k+"="+strings.Join(env[k], ","))
		}
		spec.Devices = append(spec.Devices, cdispec.Device{Name: cdiDeviceName(uid, r), ContainerEdits: edits})
	}
	if len(spec.Devices) == 0 {
		return nil, nil
	}
	v, err := plugin.MinimumCDIVersion(spec)
	if err != nil {
		return nil, fmt.Errorf("CDI version of claim %s's spec: %w", uid, err)
	}
	spec.Version = v
	return spec, nil
}

// write writes the claim's spec (nothing for a claim without devices of
// ours).
func (s *claimSpecs) write(uid types.UID, pc *preparedClaim) error {
	spec, err := s.spec(uid, pc)
	if err != nil || spec == nil {
		return err
	}
	if err := s.cache.WriteSpec(spec, s.fileName(uid)); err != nil {
		return fmt.Errorf("write CDI spec of claim %s/%s (%s): %w", pc.Namespace, pc.Name, uid, err)
	}
	return nil
}

// remove deletes the claim's spec; a missing one is not an error.
func (s *claimSpecs) remove(uid types.UID) error {
	if err := s.cache.RemoveSpec(s.fileName(uid)); err != nil {
		return fmt.Errorf("remove CDI spec %s: %w", filepath.Join(s.dir, s.fileName(uid)), err)
	}
	return nil
}

// listed returns the claim UIDs of the claim specs of ours in the
// directory (other files belong to other vendors or kinds).
func (s *claimSpecs) listed() ([]types.UID, error) {
	prefix := strings.TrimSuffix(s.fileName(""), ".json")
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("CDI spec directory: %w", err)
	}
	var out []types.UID
	for _, e := range ents {
		uid, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !strings.HasSuffix(uid, ".json") || !e.Type().IsRegular() {
			continue
		}
		if uid = strings.TrimSuffix(uid, ".json"); uid != "" {
			out = append(out, types.UID(uid))
		}
	}
	return out, nil
}
