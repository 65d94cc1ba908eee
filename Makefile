# accel-device-plugin. `make demo` runs the main job, `make test` the tests.
GO      ?= go
BIN     := bin/accel-plugin
VIEW    := bin/kubelet-view
PKGS    := ./...
VERSION ?= $(shell cat $(CURDIR)/VERSION)
IMAGE   ?= localhost/accel-device-plugin:$(VERSION)
# API: what `make demo` installs, devicePlugin (default) or dra (the DRA driver)
API     ?= devicePlugin
OUT     := _output
# Separate Go modules, so the main module's dependencies stay small:
# e2e          k8s.io/kubernetes: the plugin against kubelet's real device manager (e2e/kubelet),
#              the local cluster and the end-to-end tests
# charts/tests chart render tests (k8s.io/api, sigs.k8s.io/yaml)
# build/image  OCI image archive without Docker (go-containerregistry)
E2E         := e2e
CHART_TESTS := charts/tests
IMAGE_TOOL  := build/image
MODULES     := . $(E2E) $(CHART_TESTS) $(IMAGE_TOOL)
CHART       := charts/accel-device-plugin
# Tools built from their Go modules, cached outside the repository by version.
TOOLS        ?= $(HOME)/.cache/accel-device-plugin/tools
HELM_VERSION := v3.22.0
HELM         := $(TOOLS)/helm-$(HELM_VERSION)/helm
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT         := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)/golangci-lint
# kubectl for the demo, built from the e2e module (the same Kubernetes version as the local cluster)
KUBECTL      := $(TOOLS)/kubectl-v1.37.2/kubectl

LOCALCLUSTER := bin/localcluster
KINDCLUSTER  := bin/kindcluster
E2E_IMAGE_TAR = $(CURDIR)/$(OUT)/accel-device-plugin-$(VERSION).tar
# The example workload (examples/accel-job.c, static) in an image of its own
JOB_IMAGE     ?= localhost/accel-job:$(VERSION)
JOB_IMAGE_TAR  = $(CURDIR)/$(OUT)/accel-job-$(VERSION).tar
CC            ?= cc
IMPORTS        = --import $(E2E_IMAGE_TAR) --import $(JOB_IMAGE_TAR)

.PHONY: all build view image example test test-kubelet test-chart test-image lint lint-go lint-gofmt lint-golangci lint-helm helm golangci-lint bench demo demo-node demo-down \
	localcluster cluster-build cluster-up cluster-down kubectl e2e kindcluster kind-build kind-up e2e-kind e2e-kind-down fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/plugin

## view: kubelet-view, kubelet's real device manager standing alone (for the demo)
view:
	cd $(E2E) && $(GO) build -o $(CURDIR)/$(VIEW) ./kubelet/cmd/kubelet-view

## image: the static binary in an OCI image archive (no Docker needed), loadable
## with `ctr -n k8s.io images import` and `docker load`
image:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(OUT)/accel-plugin ./cmd/plugin
	cd $(IMAGE_TOOL) && SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) $(GO) run . \
	  --binary $(CURDIR)/$(OUT)/accel-plugin --image $(IMAGE) \
	  --out $(CURDIR)/$(OUT)/accel-device-plugin-$(VERSION).tar
	@echo "image archive: $(OUT)/accel-device-plugin-$(VERSION).tar ($(IMAGE))"
	$(MAKE) example
	cd $(IMAGE_TOOL) && SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) $(GO) run . \
	  --binary $(CURDIR)/$(OUT)/accel-job --path /accel-job --title accel-job --image $(JOB_IMAGE) --out $(JOB_IMAGE_TAR)
	@echo "image archive: $(OUT)/accel-job-$(VERSION).tar ($(JOB_IMAGE))"

## example: examples/accel-job.c, built statically against include/uapi only, into _output/accel-job
## (run it as `_output/accel-job /path/to/acN`: one job on the device, exit 0 when its answer is right)
example:
	@mkdir -p $(OUT)
	@command -v $(CC) >/dev/null || { echo "make example: no C compiler $(CC): apt-get install gcc libc6-dev" >&2; exit 1; }
	@case "$$($(CC) -print-file-name=libc.a)" in /*) ;; *) echo "make example: no static C library (libc.a) for $(CC): apt-get install libc6-dev" >&2; exit 1;; esac
	$(CC) -static -O2 -Wall -Wextra -Werror -I include/uapi -o $(OUT)/accel-job examples/accel-job.c

## helm: build helm from its Go module once (about 3 minutes), cached in $(TOOLS)
helm: $(HELM)
$(HELM):
	GOBIN=$(dir $(HELM)) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

## golangci-lint: build golangci-lint from its Go module once (about 2 minutes), cached in $(TOOLS)
golangci-lint: $(GOLANGCI_LINT)
$(GOLANGCI_LINT):
	GOBIN=$(dir $(GOLANGCI_LINT)) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

kubectl: $(KUBECTL)
$(KUBECTL):
	cd $(E2E) && $(GO) build -o $@.tmp k8s.io/kubernetes/cmd/kubectl && mv $@.tmp $@

## test: lint, every test with the race detector, the plugin against kubelet's
## real device manager, the chart render tests and the image tool's tests
## (FUSE and kubelet tests need root). The tests run with -vet=off: lint has
## just run go vet's analyzers (golangci-lint's govet) on every package, and
## go test's own vet pass would redo part of that (about a minute cold).
TESTFLAGS ?= -vet=off
test: lint
	$(GO) test -race -count=1 $(TESTFLAGS) $(PKGS)
	$(MAKE) test-kubelet test-chart test-image

## test-kubelet: accel-plugin against k8s.io/kubernetes' device manager, and the local
## cluster's unit tests (PKI, configs; they change nothing on the host)
test-kubelet:
	cd $(E2E) && $(GO) test -count=1 $(TESTFLAGS) ./kubelet/... ./cluster/... ./kind/...

## test-chart: render the chart with several values files and assert on it
test-chart: $(HELM)
	cd $(CHART_TESTS) && HELM=$(HELM) $(GO) test -count=1 $(TESTFLAGS) ./...

## test-image: build image archives and read them back
test-image:
	cd $(IMAGE_TOOL) && $(GO) test -count=1 $(TESTFLAGS) ./...

## lint: gofmt check, then golangci-lint (.golangci.yml; its govet runs go vet's analyzers) of
## every module, then helm lint; gofmt reports before the first run builds either tool
lint: lint-gofmt lint-golangci lint-helm

## lint-gofmt: gofmt check of every Go file
lint-gofmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

## lint-go: gofmt check and go vet of every module: the quick check that needs no tool built
## (make lint covers it; a separate go vet there would cost minutes on a cold cache)
lint-go: lint-gofmt
	@for m in $(MODULES); do echo "go vet ($$m)"; (cd $$m && $(GO) vet ./...) || exit 1; done

## lint-golangci: golangci-lint run of every module (config: .golangci.yml)
lint-golangci: $(GOLANGCI_LINT)
	@for m in $(MODULES); do echo "golangci-lint ($$m)"; (cd $$m && $(GOLANGCI_LINT) run ./...) || exit 1; done

## lint-helm: helm lint --strict of the chart
lint-helm: $(HELM)
	$(HELM) lint --strict $(CHART)

## fuzz: every native Go fuzz target of the main module, FUZZTIME each (default 30s);
## crashers land in the package's testdata/fuzz/ and run in plain `go test` once committed
FUZZTIME ?= 30s
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

## bench: latency benchmarks (FUSE open/close, info ioctl, core, kernel floor, mapped write
## bandwidth and job round trip of device memory,
## Allocate, hot-plug → ListAndWatch, DRA Prepare/Unprepare, DRA hot-plug → ResourceSlice) and the plugin's footprint with 128 devices
bench:
	$(GO) test -run '^$$' -bench . -skip 'MappedWrite|JobRoundTrip' -benchtime 20000x ./pkg/accel/...
	$(GO) test -run '^$$' -bench 'MappedWrite' -benchtime 20x ./pkg/accel/devfs/
	$(GO) test -run '^$$' -bench 'JobRoundTrip' -benchtime 5000x ./pkg/accel/devfs/
	$(GO) test -run '^$$' -bench . -benchtime 5000x ./pkg/plugin/
	$(GO) test -run '^$$' -bench . -benchtime 300x ./pkg/dra/
	cd $(E2E) && $(GO) test -run '^$$' -bench Footprint -benchtime 1x ./kubelet/

## localcluster: the local single-node cluster provider (e2e/cmd/localcluster)
localcluster:
	cd $(E2E) && $(GO) build -o $(CURDIR)/$(LOCALCLUSTER) ./cmd/localcluster

## cluster-build: build what the local cluster runs (Kubernetes, containerd) and the demo's
## kubectl into the cache, changing nothing else (no root needed); CI runs it in the background
cluster-build: localcluster $(KUBECTL)
	$(LOCALCLUSTER) build

## cluster-up: a real single-node cluster on this machine (root; installs Debian packages, builds
## Kubernetes v1.37.2 and containerd v2.4.2 once into ~/.cache/accel-device-plugin), with our image imported
cluster-up: image localcluster
	$(LOCALCLUSTER) up $(IMPORTS)

## cluster-down: stop it and undo what it changed on the host
cluster-down: localcluster
	$(LOCALCLUSTER) down

## e2e: the end-to-end suite on the local cluster (brought up if needed): the device story with
## bind mounts, then with CDI (containerd 2), then restarts and uninstall
e2e: cluster-up $(HELM)
	cd $(E2E) && ACCEL_E2E_KUBECONFIG=$$($(CURDIR)/$(LOCALCLUSTER) kubeconfig) ACCEL_E2E_HELM=$(HELM) ACCEL_E2E_IMAGE=$(IMAGE) ACCEL_E2E_JOB_IMAGE=$(JOB_IMAGE) \
	  ACCEL_E2E_RESTART_KUBELET="$(CURDIR)/$(LOCALCLUSTER) restart-kubelet" ACCEL_E2E_CTR="$(CURDIR)/$(LOCALCLUSTER) ctr" \
	  $(GO) test -count=1 -v -timeout 20m ./suite/

## kindcluster: the kind cluster provider (e2e/cmd/kindcluster)
kindcluster:
	cd $(E2E) && $(GO) build -o $(CURDIR)/$(KINDCLUSTER) ./cmd/kindcluster

## kind-build: build what the offline kind node image is made of into the cache (no Docker;
## CI runs it in the background)
kind-build: kindcluster
	$(KINDCLUSTER) build

## e2e-kind: the suite on kind, on one node (the whole suite), then on a control plane and two
## workers (the multi-node story). Starts dockerd when none runs and stops it after. Offline
## (no KIND_NODE_IMAGE, no registry): the node image is built here (~25 min the first time,
## cached in ~/.cache/accel-device-plugin); KIND_NODE_IMAGE=stock uses kind's own, KIND_NODE_IMAGE=NAME
## that image. KIND_TOPOLOGIES picks (default "single multi"); KIND_KEEP=1 leaves the last cluster up.
KIND_TOPOLOGIES ?= single multi
e2e-kind: image kindcluster $(HELM)
	@set -e; [ -n "$(KIND_KEEP)" ] || trap '$(KINDCLUSTER) down' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	image="$${KIND_NODE_IMAGE:-}"; \
	if [ -z "$$image" ] && $(KINDCLUSTER) registry-reachable 2>/dev/null; then image=stock; fi; \
	for t in $(KIND_TOPOLOGIES); do \
	  kc=$$($(KINDCLUSTER) up --topology $$t --image "$$image" $(IMPORTS)); \
	  cp=$$($(KINDCLUSTER) node --topology $$t); \
	  run=.; [ $$t = multi ] && run=TestMultiNode; \
	  echo "== e2e-kind: the suite on the $$t topology ($$kc)"; \
	  (cd $(E2E) && ACCEL_E2E_KUBECONFIG=$$kc ACCEL_E2E_TOPOLOGY=$$t ACCEL_E2E_HELM=$(HELM) ACCEL_E2E_IMAGE=$(IMAGE) ACCEL_E2E_JOB_IMAGE=$(JOB_IMAGE) \
	    ACCEL_E2E_RESTART_KUBELET="docker exec $$cp systemctl restart kubelet" \
	    ACCEL_E2E_CTR="docker exec $$cp ctr -n k8s.io" \
	    $(GO) test -count=1 -v -timeout 20m -run "$$run" ./suite/); \
	done

## e2e-kind-down: delete the kind clusters; stop dockerd if e2e-kind started it
e2e-kind-down: kindcluster
	$(KINDCLUSTER) down

## demo: the main job. Without KUBECONFIG: bring up the local cluster (KIND=1: a kind cluster,
## see e2e-kind); then install the chart, run the example pods and print what they saw (API=dra: as
## a DRA driver). `make demo-down` (KIND=1 for kind) removes it all.
KIND ?=
DEMO_KUBECONFIG = $${KUBECONFIG:-$$(if [ -n "$(KIND)" ]; then $(CURDIR)/$(KINDCLUSTER) kubeconfig; else $(CURDIR)/$(LOCALCLUSTER) kubeconfig; fi)}
demo: $(HELM) $(KUBECTL)
	@if [ -z "$$KUBECONFIG" ]; then if [ -n "$(KIND)" ]; then $(MAKE) kind-up; else $(MAKE) cluster-up; fi; fi
	KUBECTL=$(KUBECTL) API=$(API) JOB_IMAGE=$(JOB_IMAGE) bash scripts/demo-cluster.sh "$(DEMO_KUBECONFIG)" $(HELM) $(IMAGE)

## kind-up: a one-node kind cluster with our image loaded (what `KIND=1 make demo` runs on)
kind-up: image kindcluster
	$(KINDCLUSTER) up $(IMPORTS)

## demo-down: uninstall the demo; stop the local cluster (KIND=1: the kind cluster) if it was ours
demo-down: $(HELM) $(KUBECTL) localcluster kindcluster
	-export KUBECONFIG="$(DEMO_KUBECONFIG)"; \
	  $(KUBECTL) delete namespace accel-demo --wait=true --timeout=2m --ignore-not-found; \
	  $(HELM) uninstall accel --namespace accel-demo --wait --ignore-not-found
	@if [ -z "$$KUBECONFIG" ]; then if [ -n "$(KIND)" ]; then $(KINDCLUSTER) down; else $(MAKE) cluster-down; fi; fi

## demo-node: no cluster: 4 simulated devices walked through their behaviour (a second driver and
## the example workload included), then the plugin
## registered with kubelet's real device manager (kubelet-view)
demo-node: build view example
	bash scripts/demo.sh $(BIN) $(VIEW) $(OUT)/accel-job

clean:
	rm -rf bin $(OUT)
