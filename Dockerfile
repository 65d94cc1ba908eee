# accel-device-plugin image: one static binary at /accel-plugin, no base image.
#
# Not built on this project's machines or in CI: they have no Docker engine.
# There, `cd build/image && go run . --binary … --image … --out …` builds the
# equivalent image archive without Docker (same file, mode, entrypoint, labels);
# load it with `docker load -i` or `ctr -n k8s.io images import`. Keep the two
# in step: build/image/image.go has the entrypoint, labels and PATH.
#
# Elsewhere:
#   docker build -t localhost/accel-device-plugin:0.1.0 --build-arg VERSION=0.1.0 .

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Set by BuildKit from --platform; empty under the legacy builder (= native).
ARG TARGETOS TARGETARCH
RUN CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w" -o /accel-plugin ./cmd/plugin

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="accel-device-plugin" \
      org.opencontainers.image.source="https://github.com/accel-device-plugin/accel-device-plugin" \
      org.opencontainers.image.version="${VERSION}"
# go build writes it 0755; COPY into scratch makes it 0:0.
COPY --from=build /accel-plugin /accel-plugin
ENTRYPOINT ["/accel-plugin"]
