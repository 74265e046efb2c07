#!/bin/sh
# Runs the checker in the current network namespace: shared by the guest's /init and by the host run
# (where run.sh calls it inside `unshare --net`, so the veth and every attachment die with that netns).
# usage: check.sh CGROUP_DIR CHECKER OBJECT.o...
# The cgroup is made here and removed on the way out; the programs attach only to it.
set -u
cg=$1; checker=$2; shift 2

# busybox sh runs its own applets before PATH: the guest passes iproute2 as $IP.
ip() { if [ -n "${IP:-}" ]; then "$IP" "$@"; else command ip "$@"; fi; }
setup_failed() { echo "RESULT	-	-	setup	fail	$*"; exit 1; }
ip link set lo up || setup_failed "cannot bring lo up"
ip link add akc0 type veth peer name akc1 || setup_failed "cannot create the veth pair (veth module missing?)"
# 198.18.0.1 stands for the node ztunnel address in the functional checks (func.c).
ip addr add 198.18.0.1/32 dev lo || setup_failed "cannot address lo"
ip addr add 198.18.1.1/24 dev akc0 || setup_failed "cannot address akc0"
# inpod over IPv6 (inpod6.c): the pod's IPv6 address on akc0, another local one on lo; no duplicate
# address detection, so both are usable at once.
ip -6 addr add fd00:a3bf::1/128 dev lo nodad || setup_failed "cannot address lo (IPv6)"
ip -6 addr add fd00:a3bf:1:1::1/64 dev akc0 nodad || setup_failed "cannot address akc0 (IPv6)"
ip link set akc0 up && ip link set akc1 up || setup_failed "cannot bring the veth pair up"
# (/sys shows the host netns inside unshare, so the MAC comes from ip.)
# 198.18.1.2 stands for an ambient pod behind akc0 (its host-side veth): a static neighbour lets a SYN
# leave akc0 without an ARP answer, so the tc program on akc0 sees it.
ip neigh add 198.18.1.2 lladdr "$(ip -br link show akc1 | awk '{print $3}')" dev akc0 nud permanent \
  || setup_failed "cannot add the pod neighbour"
# fd00:a3bf:1:1::2, its IPv6 twin (the node topology's IPv6 checks, func.c).
ip -6 neigh add fd00:a3bf:1:1::2 lladdr "$(ip -br link show akc1 | awk '{print $3}')" dev akc0 nud permanent \
  || setup_failed "cannot add the pod's IPv6 neighbour"
# Injected SYNs (func.c check_tc) enter on akc0 and are forwarded back out of it to the pod: routing
# on, and no reverse-path check for their made-up source.
{ echo 1 > /proc/sys/net/ipv4/ip_forward && echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter &&
  echo 0 > /proc/sys/net/ipv4/conf/akc0/rp_filter && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding; } \
  || setup_failed "cannot enable forwarding"
# The return path of ztunnel's spoofed inbound legs, as the loader sets it in a pod's netns
# (src/bpf/return-path.ts; leg.c): the app's socket takes the SYN's 0x1000 mark and its replies to the
# client's address go back over lo. Only sockets the inpod programs marked 0x1000 are affected.
{ echo 1 > /proc/sys/net/ipv4/tcp_fwmark_accept &&
  ip rule add fwmark 0x1000/0x1000 pref 32763 lookup 41919 &&
  ip route add local 0.0.0.0/0 dev lo table 41919 &&
  ip -6 rule add fwmark 0x1000/0x1000 pref 32763 lookup 41919 &&
  ip -6 route add local ::/0 dev lo table 41919; } || setup_failed "cannot add the spoofed legs' return path"
mkdir "$cg" || { echo "RESULT	-	-	setup	fail	cannot create cgroup $cg"; exit 1; }
"$checker" --cgroup "$cg" --iface akc0 "$@"
rc=$?
# The checker's children have exited, so the cgroup is empty and can go.
rmdir "$cg" 2>/dev/null || sleep 0.2; rmdir "$cg" 2>/dev/null
exit $rc
