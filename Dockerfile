# ambpf image: the loader (TypeScript on Node 24), its production node_modules, the BPF objects
# compiled at build time, and the chained CNI plugin ambpf-cni (static; the DaemonSet's cni-install
# container copies it into the host's CNI bin dir). The runtime has no compiler: the loader finds the prebuilt objects in the
# cache under $AMBPF_CACHE_DIR by the hash of the bpf/ sources it ships (src/bpf/build.ts).
#
#   docker build -t ghcr.io/ambpf/ambpf:0.1.0 .
#
# x86-64 only: src/bpf/build.ts compiles with -D__TARGET_ARCH_x86 and x86_64 system headers.

# 1. The application tree: production dependencies (koffi ships its native module prebuilt, so no
#    compiler is needed), the sources and their JavaScript build. bpf/ stays in it: the loader hashes
#    the sources to find the prebuilt cache entry.
FROM node:24-bookworm-slim AS app
WORKDIR /opt/ambpf
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY bpf ./bpf
# The sources as JavaScript in dist/ (what `make js` builds): bin/ambpf runs it while it matches src/, so
# the loader never loads Node's TypeScript stripper (~17 MiB resident, issue 20).
RUN node --disable-warning=ExperimentalWarning src/cli/build-js.ts

# 2. BPF objects. `ambpf build` runs clang with exactly the flags of src/bpf/build.ts and writes the
#    cache entry (<sources hash>-<clang hash>/) the loader looks up; running clang by hand here
#    would have to recompute that key. bin/ambpf uses the `node` on PATH (>= 24), copied in.
FROM debian:bookworm AS bpf
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang llvm libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=app /usr/local/bin/node /usr/local/bin/node
COPY --from=app /opt/ambpf /opt/ambpf
WORKDIR /opt/ambpf
ENV AMBPF_CACHE_DIR=/opt/ambpf/build/bpf
RUN bin/ambpf build

# 3. The CNI plugin, exactly as the Makefile's `cni` target builds it. Static: the host runs it, from
#    its own CNI bin dir, with whatever libc the node has (or none). Only its one source file comes
#    in; the tests and their stand-ins (test/, .dockerignore) never reach any stage.
FROM debian:bookworm AS cni
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ambpf
COPY cni/ambpf-cni.c ./cni/
RUN mkdir -p build/cni \
 && gcc -static -O2 -Wall -Wextra -Werror -o build/cni/ambpf-cni cni/ambpf-cni.c

# 4. Runtime. libbpf1 for the koffi binding, bpftool and iproute2 for the loader and for debugging
#    (`kubectl exec ... bpftool prog show`); util-linux (nsenter, mount) is already in the base.
FROM node:24-bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libbpf1 bpftool iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=app /opt/ambpf /opt/ambpf
COPY --from=bpf /opt/ambpf/build/bpf /opt/ambpf/build/bpf
COPY --from=cni /opt/ambpf/build/cni/ambpf-cni /opt/ambpf/build/cni/ambpf-cni
WORKDIR /opt/ambpf
ENV AMBPF_CACHE_DIR=/opt/ambpf/build/bpf \
    AMBPF_LOG_FORMAT=json \
    PATH=/opt/ambpf/bin:$PATH
ENTRYPOINT ["/opt/ambpf/bin/ambpf"]
CMD ["run", "--in-cluster"]
