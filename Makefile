# nodeplane developer targets. `make test` must run as root for the kernel
# tests; without root they skip (or fail with NODEPLANE_REQUIRE_PRIV=1).

GO ?= go
PKGS ?= ./...

.PHONY: all generate test bench lint ci

all: generate lint test

# Regenerate the committed BPF objects (needs clang-19, llvm-19, libbpf-dev).
generate:
	$(GO) generate $(PKGS)

test:
	NODEPLANE_REQUIRE_PRIV=$${NODEPLANE_REQUIRE_PRIV:-0} $(GO) test -race -count=1 -timeout 45m $(PKGS)

# Full benchmark run; see doc/benchmarks.md for the commands behind each table.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 6 -timeout 60m $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

ci:
	bash .ci/run
