# ambpf: the two commands a new user needs are `make demo` and `make test`. Both install what is
# missing (Debian packages, Node 24 via npm, node_modules) and are idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

NODE  := node_modules/node/bin/node
AMBPF := bin/ambpf
TAP   := $(NODE) node_modules/tap/dist/esm/run.mjs
TSC   := $(NODE) node_modules/typescript/bin/tsc

# Debian packages the build, the tests and the demo use.
APT_PACKAGES := clang llvm libbpf-dev libbpf1 libelf-dev zlib1g-dev bpftool iproute2 iptables nftables ipset \
                curl iperf3 wrk nginx util-linux procps psmisc openssl gcc libc6-dev containernetworking-plugins \
                dnsmasq-base dnsperf clang-format

.PHONY: help deps apt node bpf cni js typecheck lint format format-check test demo kernels clean
help:
	@echo "make demo   - run the local two-node demo on the eBPF path"
	@echo "make test   - typecheck and run the test suite (as root, on this kernel)"
	@echo "make bpf    - compile the BPF objects into the cache"
	@echo "make cni    - build the chained CNI plugin build/cni/ambpf-cni"

deps: apt node bpffs

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# npm ci brings node@24 (a devDependency) along with everything else.
node: node_modules/.ambpf-installed
node_modules/.ambpf-installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@$(NODE) -e 'if (+process.versions.node.split(".")[0] < 24) { console.error("node_modules/node is not Node 24"); process.exit(1) }'
	@touch $@

.PHONY: bpffs
bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

bpf: deps
	$(AMBPF) build

# The chained CNI plugin (docs/cni.md): static, so the DaemonSet can copy it to any host's CNI bin dir.
cni: build/cni/ambpf-cni
build/cni/ambpf-cni: cni/ambpf-cni.c
	@mkdir -p build/cni
	gcc -static -O2 -Wall -Wextra -Werror -o $@ $<

# The sources as JavaScript in dist/ (src/cli/build-js.ts): bin/ambpf runs it while it matches src/ byte
# for byte, sparing the loader Node's TypeScript stripper (issue 20's RSS); after an edit, the sources run.
js: node
	$(NODE) --disable-warning=ExperimentalWarning src/cli/build-js.ts

typecheck: node
	$(TSC) --noEmit -p .

# ESLint (eslint.config.js): the import layering of src/ and a few bug-catching rules; no style rules.
lint: node
	$(NODE) node_modules/eslint/bin/eslint.js .

# Layout: Prettier for the TypeScript (.prettierrc.json), clang-format in the kernel's style for the C
# (.clang-format). `make format` rewrites; `make test` only checks, so a mis-formatted change fails CI.
PRETTIER  := $(NODE) node_modules/prettier/bin/prettier.cjs
C_SOURCES  = $(wildcard bpf/*.c bpf/include/*.h cni/*.c kernels/*/*.c kernels/*/*.h)
format: node
	$(PRETTIER) --log-level warn --write .
	clang-format -i $(C_SOURCES)
format-check: node
	$(PRETTIER) --log-level warn --check .
	clang-format --dry-run --Werror $(C_SOURCES)

# scripts/leftovers.ts: the suite as a whole leaves no netns, cgroup, pin, BPF program or link,
# interface or iptables rule behind (each test file also checks its own).
test: deps typecheck lint format-check bpf cni js
	@mkdir -p build && $(NODE) scripts/leftovers.ts snapshot build/leftovers-before.json
	$(TAP)
	$(NODE) scripts/leftovers.ts check build/leftovers-before.json
	$(NODE) scripts/check-coverage.ts

demo: deps bpf cni js
	$(AMBPF) demo

# The kernel matrix (5.10, 6.1, 6.12 under qemu + the host): test/kernels.test.ts runs it inside
# `make test`; this target runs it alone and rewrites docs/kernels.md.
kernels: deps bpf
	kernels/run.sh

clean:
	rm -rf build dist .tap coverage
