# accel-device-plugin. `make demo` runs the main job, `make test` the tests.
GO      ?= go
BIN     := bin/accel-plugin
VIEW    := bin/kubelet-view
PKGS    := ./...
# e2e/kubelet is its own Go module (it needs k8s.io/kubernetes; the main module does not).
KUBELET_E2E := e2e/kubelet

.PHONY: all build view test test-kubelet lint bench demo clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/plugin

## view: kubelet-view, kubelet's real device manager standing alone (for the demo)
view:
	cd $(KUBELET_E2E) && $(GO) build -o $(CURDIR)/$(VIEW) ./cmd/kubelet-view

## test: lint, every unit/integration test with the race detector, then the
## plugin against kubelet's real device manager (FUSE tests need root)
test: lint
	$(GO) test -race -count=1 $(PKGS)
	$(MAKE) test-kubelet

## test-kubelet: accel-plugin against k8s.io/kubernetes' device manager
test-kubelet:
	cd $(KUBELET_E2E) && $(GO) test -count=1 ./...

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	cd $(KUBELET_E2E) && $(GO) vet ./...

## bench: latency benchmarks (FUSE open/close, info ioctl, core, kernel floor,
## Allocate, hot-plug → ListAndWatch) and the plugin's footprint with 128 devices
bench:
	$(GO) test -run '^$$' -bench . -benchtime 20000x ./pkg/accel/...
	$(GO) test -run '^$$' -bench . -benchtime 5000x ./pkg/plugin/
	cd $(KUBELET_E2E) && $(GO) test -run '^$$' -bench Footprint -benchtime 1x .

## demo: 4 simulated devices walked through their behaviour, then the plugin
## registered with kubelet's real device manager
demo: build view
	bash scripts/demo.sh $(BIN) $(VIEW)

clean:
	rm -rf bin
