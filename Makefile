# accel-device-plugin. `make demo` runs the main job, `make test` the tests.
GO      ?= go
BIN     := bin/accel-plugin
PKGS    := ./...

.PHONY: all build test unit lint bench demo clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/plugin

## test: lint, then every test with the race detector (FUSE tests need root)
test: lint
	$(GO) test -race -count=1 $(PKGS)

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## bench: latency benchmarks (FUSE open/close, info ioctl, core, kernel floor)
bench:
	$(GO) test -run '^$$' -bench . -benchtime 20000x ./pkg/...

## demo: run 4 simulated devices and walk through their behaviour
demo: build
	bash scripts/demo.sh $(BIN)

clean:
	rm -rf bin
