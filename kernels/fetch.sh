#!/bin/bash
# Fetch one Debian kernel into the cache: kernels/fetch.sh SERIES CACHE_DIR
# Leaves CACHE_DIR/SERIES/{vmlinuz,modules/*.ko,package} and nothing else (the .deb is deleted).
# Uses a private apt configuration (own sources.list, lists and archive cache under CACHE_DIR/apt)
# so the host's apt state is never touched and the suites do not depend on the host's release.
# Mirror: $AMBPF_DEBIAN_MIRROR (default http://deb.debian.org).
set -euo pipefail
series=$1; cache=$2
mirror=${AMBPF_DEBIAN_MIRROR:-http://deb.debian.org}
out=$cache/$series

if [[ -s $out/vmlinuz && -f $out/package ]]; then exit 0; fi

case $series in
  5.10) suite=bullseye-security; pattern='^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$' ;;
  6.1)  suite=bookworm;          pattern='^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' ;;
  6.12) suite=bookworm-security; pattern='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' ;;
  *) echo "fetch.sh: unknown kernel series '$series' (known: 5.10 6.1 6.12)" >&2; exit 2 ;;
esac
case $suite in *-security) archive=$mirror/debian-security ;; *) archive=$mirror/debian ;; esac

apt_dir=$cache/apt/$suite
mkdir -p "$apt_dir"/{etc/apt.conf.d,etc/preferences.d,lists/partial,archives/partial}
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $archive $suite main" > "$apt_dir/etc/sources.list"
apt_opts=(-o "Dir::Etc=$apt_dir/etc" -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
          -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::State::Lists=$apt_dir/lists"
          -o "Dir::Cache=$apt_dir" -o "Dir::Cache::Archives=$apt_dir/archives"
          -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")

if ! apt-get "${apt_opts[@]}" -qq update >"$apt_dir/update.log" 2>&1 || grep -q '^[EW]:.*\(Failed\|Could not\|Unable\)' "$apt_dir/update.log"; then
  echo "fetch.sh: cannot read the package list of $suite from $archive (set AMBPF_DEBIAN_MIRROR to a reachable Debian mirror):" >&2
  sed 's/^/  /' "$apt_dir/update.log" >&2
  exit 3
fi

# The newest package of the series that the suite actually offers (a candidate version).
best=""; best_ver=""
while read -r name _; do
  ver=$(apt-cache "${apt_opts[@]}" policy "$name" | awk '/Candidate:/ {print $2}')
  [[ -z $ver || $ver == "(none)" ]] && continue
  if [[ -z $best_ver ]] || dpkg --compare-versions "$ver" gt "$best_ver"; then best=$name; best_ver=$ver; fi
done < <(apt-cache "${apt_opts[@]}" search --names-only "$pattern")
if [[ -z $best ]]; then
  echo "fetch.sh: $suite at $archive offers no package matching $pattern" >&2
  exit 3
fi

work=$(mktemp -d "$cache/.fetch-$series.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "fetch.sh: downloading $best $best_ver from $suite" >&2
if ! (cd "$work" && apt-get "${apt_opts[@]}" -qq download "$best" >&2); then
  echo "fetch.sh: download of $best failed from $archive" >&2
  exit 3
fi
# Only the kernel and the modules the checks need (Debian builds these as modules; 6.12 ships .ko.xz).
dpkg-deb --fsys-tarfile "$work"/*.deb | tar -x -C "$work" --wildcards \
  './boot/vmlinuz-*' '*/kernel/net/sched/cls_bpf.ko*' '*/kernel/net/sched/sch_ingress.ko*' \
  '*/kernel/drivers/net/veth.ko*'
mkdir -p "$work/out/modules"
cp "$work"/boot/vmlinuz-* "$work/out/vmlinuz"
find "$work" -path "$work/out" -prune -o -name '*.ko*' -exec cp {} "$work/out/modules/" \;
for f in "$work"/out/modules/*.xz; do [[ -e $f ]] && xz -d "$f"; done
for f in "$work"/out/modules/*.zst; do [[ -e $f ]] && zstd -q -d --rm "$f"; done
echo "$best $best_ver" > "$work/out/package"
rm -rf "$out"
mv "$work/out" "$out"
