// Package tests checks the accel-device-plugin Helm chart: it renders the
// chart with `helm template` and asserts on the decoded objects.
//
// helm comes from the environment variable HELM (the Makefile sets it):
//
//	HELM=/path/to/helm go test -count=1 ./...
package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	chartDir  = "../accel-device-plugin"
	release   = "accel-device-plugin" // fullname = release name (it contains the chart name)
	namespace = "accel-system"
	pluginDS  = "accel-device-plugin"
	simDS     = "accel-device-plugin-sim"
)

var helm string

func TestMain(m *testing.M) {
	helm = os.Getenv("HELM")
	if helm == "" {
		fmt.Fprintln(os.Stderr, "chart tests: the environment variable HELM is not set; point it at a helm v3 binary, e.g.\n"+
			"  HELM=/root/.cache/accel-device-plugin/tools/helm-v3.22.0/helm go test -count=1 ./...")
		os.Exit(2)
	}
	st, err := os.Stat(helm)
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "chart tests: HELM=%s: %v (build it with: GOBIN=$(dirname %s) go install helm.sh/helm/v3/cmd/helm@v3.22.0)\n", helm, err, helm)
		os.Exit(2)
	case st.IsDir() || st.Mode()&0o111 == 0:
		fmt.Fprintf(os.Stderr, "chart tests: HELM=%s is not an executable file\n", helm)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// runHelm runs helm with args and returns stdout, stderr and the error.
func runHelm(args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(helm, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// doc is one rendered manifest.
type doc struct {
	Source string // templates/x.yaml
	Kind   string
	Name   string
	Raw    string // the document's text, exactly as helm printed it
	Hook   string // the helm.sh/hook annotation, for hook objects
}

type rendered struct {
	args  []string
	docs  []doc // the release's objects
	hooks []doc // hook objects (helm.sh/hook), created around install/delete
}

var (
	docSep    = regexp.MustCompile(`(?m)^---[ \t]*\n`)
	sourceRef = regexp.MustCompile(`(?m)^# Source: [^/]+/(.+)$`)
)

// valuesArgs turns "name.yaml" into -f testdata/name.yaml and passes
// anything else (--set k=v, ...) through.
func valuesArgs(in []string) []string {
	var out []string
	for _, a := range in {
		if strings.HasSuffix(a, ".yaml") && !strings.HasPrefix(a, "-") {
			out = append(out, "-f", filepath.Join("testdata", a))
		} else {
			out = append(out, a)
		}
	}
	return out
}

// render runs helm template with the given values files / flags; it fails
// the test if helm fails.
func render(t *testing.T, values ...string) *rendered {
	t.Helper()
	return renderChart(t, chartDir, values...)
}

func renderChart(t *testing.T, chart string, values ...string) *rendered {
	t.Helper()
	args := append([]string{"template", release, chart, "--namespace", namespace}, valuesArgs(values)...)
	out, errOut, err := runHelm(args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	r := &rendered{args: values}
	for _, part := range docSep.Split(out, -1) {
		if strings.TrimSpace(part) == "" {
			continue
		}
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name        string            `json:"name"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(part), &head); err != nil {
			t.Fatalf("%v: rendered YAML does not parse: %v\n%s", values, err, part)
		}
		if head.Kind == "" {
			continue // a template that rendered to comments only
		}
		d := doc{Kind: head.Kind, Name: head.Metadata.Name, Raw: part}
		if m := sourceRef.FindStringSubmatch(part); m != nil {
			d.Source = m[1]
		}
		if hook := head.Metadata.Annotations["helm.sh/hook"]; hook != "" {
			d.Hook = hook
			r.hooks = append(r.hooks, d) // not part of the release's objects
			continue
		}
		r.docs = append(r.docs, d)
	}
	return r
}

// find returns the document of that kind and name, or nil.
func (r *rendered) find(kind, name string) *doc {
	for i := range r.docs {
		if r.docs[i].Kind == kind && r.docs[i].Name == name {
			return &r.docs[i]
		}
	}
	return nil
}

// ofKind returns the names of the documents of a kind.
func (r *rendered) ofKind(kind string) []string {
	var names []string
	for _, d := range r.docs {
		if d.Kind == kind {
			names = append(names, d.Name)
		}
	}
	return names
}

// decode strictly decodes the named object into out: a field the API type
// does not have (a typo in a template) fails the test.
func (r *rendered) decode(t *testing.T, kind, name string, out any) {
	t.Helper()
	d := r.find(kind, name)
	if d == nil {
		t.Fatalf("%v: no %s %q rendered (have %v)", r.args, kind, name, r.kinds())
	}
	if err := yaml.UnmarshalStrict([]byte(d.Raw), out); err != nil {
		t.Fatalf("%v: %s %q does not decode strictly: %v", r.args, kind, name, err)
	}
}

func (r *rendered) kinds() []string {
	var s []string
	for _, d := range r.docs {
		s = append(s, d.Kind+"/"+d.Name)
	}
	return s
}

// mustFail runs helm template with the flags and returns its combined
// output, failing the test if helm succeeds.
func mustFail(t *testing.T, values ...string) string {
	t.Helper()
	args := append([]string{"template", release, chartDir, "--namespace", namespace}, valuesArgs(values)...)
	out, errOut, err := runHelm(args...)
	if err == nil {
		t.Fatalf("helm template %v succeeded; want a failure. Output:\n%s", values, out)
	}
	return errOut + out
}
