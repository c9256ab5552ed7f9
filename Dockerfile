# syntax=docker/dockerfile:1
#
# The guestlist image: one static, non-root binary that runs every role (api, projector, edge,
# origin, dev) by its subcommand. Build it from the repository root:
#
#   docker build -t guestlist --build-arg VERSION=$(git describe --tags --always --dirty) .
#
# docker-compose.yml builds it the same way. cmd/guestlist/compose_test.go checks (without an engine)
# that the final stage runs as a non-root user and that the binary is built with CGO_ENABLED=0.

# ---- build: compile the binary with the go.work workspace ----
# Go 1.26.8 is what go.work and every go.mod ask for. $BUILDPLATFORM: cross-compile natively under
# buildx instead of emulating the target.
FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm AS build
WORKDIR /src

# Module files first, so that the download layer is reused until a go.mod or go.sum changes.
COPY go.work go.work.sum go.mod go.sum ./
COPY edge/go.mod edge/go.sum ./edge/
COPY projections/go.mod projections/go.sum ./projections/
COPY proto/go.mod proto/go.sum ./proto/
COPY services/go.mod services/go.sum ./services/
# GOWORK=off: download what the root module (the binary) needs; a workspace-wide download would also
# fetch proto/'s code generation tools (buf, protoc plugins), which the binary does not use. Anything
# the workspace selects beyond that is fetched by the build step.
RUN --mount=type=cache,target=/go/pkg/mod \
    GOWORK=off go mod download

# Then the sources (.dockerignore keeps tests, binaries, .git and local data out).
COPY cmd ./cmd
COPY edge ./edge
COPY projections ./projections
COPY proto ./proto
COPY services ./services

# VERSION is printed by "guestlist version" and reported to tracing (main.version); without it the
# binary says "devel". There is no .git in the build context, so no VCS stamping (-buildvcs=false).
ARG VERSION=""
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/guestlist ./cmd/guestlist

# The directories the roles write to, owned by the runtime user (65532, distroless "nonroot"). A named
# volume mounted on one of them starts as a copy of it, owner and mode included, so the non-root
# process can write there: /data for each role's data directory, /edge-ca for the edge CA that the
# edges share.
RUN mkdir -p -m 0700 /out/fs/data /out/fs/edge-ca

# ---- runtime: distroless static (CA certificates, tzdata, /etc/passwd with nonroot), no shell ----
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=""
LABEL org.opencontainers.image.title="guestlist" \
      org.opencontainers.image.description="mutual TLS on custom hostnames: control plane API, projector, edge" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build --chown=65532:65532 /out/fs/ /
COPY --from=build /out/guestlist /guestlist
USER 65532:65532
WORKDIR /data
ENV GUESTLIST_DATA_DIR=/data
# REST / metrics 8080, gRPC 50051, origin 8081, projector gRPC 50052 and HTTP 8082, edge HTTPS 8443
# and HTTP 8444. Inside a container, set the listen addresses to 0.0.0.0:PORT (the defaults are
# loopback).
EXPOSE 8080 8081 8082 8443 8444 50051 50052
ENTRYPOINT ["/guestlist"]
CMD ["help"]
