#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include "inject.h"

static unsigned short ip_checksum(const void *p, size_t len)
{
	const unsigned short *w = p;
	unsigned long sum = 0;

	for (; len > 1; len -= 2)
		sum += *w++;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (unsigned short)~sum;
}

static int mac_of(int fd, const char *ifname, unsigned char mac[6])
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
		return -errno;
	memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	return 0;
}

/* Fill the TCP SYN 40000 -> dport that follows the IP header. */
static void syn_header(struct tcphdr *tcp, int dport)
{
	tcp->source = htons(40000);
	tcp->dest = htons(dport);
	tcp->seq = htonl(1);
	tcp->doff = 5;
	tcp->syn = 1;
	tcp->window = htons(65535);
}

/* Send `frame` (its Ethernet header's MACs filled here) out of out_if to to_if's MAC. */
static int send_frame(const char *out_if, const char *to_if, unsigned char *frame, size_t len, int ethertype)
{
	struct ether_header *eth = (struct ether_header *)frame;
	struct sockaddr_ll to;
	int fd, err;

	fd = socket(AF_PACKET, SOCK_RAW, htons(ethertype));
	if (fd < 0)
		return -errno;
	if ((err = mac_of(fd, to_if, eth->ether_dhost)) || (err = mac_of(fd, out_if, eth->ether_shost)))
		goto out;
	eth->ether_type = htons(ethertype);
	memset(&to, 0, sizeof(to));
	to.sll_family = AF_PACKET;
	to.sll_ifindex = (int)if_nametoindex(out_if);
	to.sll_halen = ETH_ALEN;
	memcpy(to.sll_addr, eth->ether_dhost, ETH_ALEN);
	err = sendto(fd, frame, len, 0, (struct sockaddr *)&to, sizeof(to)) < 0 ? -errno : 0;
out:
	close(fd);
	return err;
}

int inject_syn(const char *out_if, const char *to_if, const char *src_ip, const char *dst_ip, int dport)
{
	unsigned char frame[sizeof(struct ether_header) + sizeof(struct iphdr) + sizeof(struct tcphdr)];
	struct iphdr *ip = (struct iphdr *)(frame + sizeof(struct ether_header));
	struct tcphdr *tcp = (struct tcphdr *)(ip + 1);

	memset(frame, 0, sizeof(frame));
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = htons(sizeof(*ip) + sizeof(*tcp));
	ip->ttl = 2;
	ip->protocol = IPPROTO_TCP;
	inet_pton(AF_INET, src_ip, &ip->saddr);
	inet_pton(AF_INET, dst_ip, &ip->daddr);
	ip->check = ip_checksum(ip, sizeof(*ip)); /* ip_rcv checks it; nothing on the way checks TCP's */
	syn_header(tcp, dport);
	return send_frame(out_if, to_if, frame, sizeof(frame), ETH_P_IP);
}

int inject_syn6(const char *out_if, const char *to_if, const char *src_ip, const char *dst_ip, int dport)
{
	unsigned char frame[sizeof(struct ether_header) + sizeof(struct ip6_hdr) + sizeof(struct tcphdr)];
	struct ip6_hdr *ip6 = (struct ip6_hdr *)(frame + sizeof(struct ether_header));
	struct tcphdr *tcp = (struct tcphdr *)(ip6 + 1);

	memset(frame, 0, sizeof(frame));
	ip6->ip6_flow = htonl(6U << 28);
	ip6->ip6_plen = htons(sizeof(*tcp));
	ip6->ip6_nxt = IPPROTO_TCP;
	ip6->ip6_hlim = 2; /* IPv6 has no header checksum; nothing on the way checks TCP's */
	inet_pton(AF_INET6, src_ip, &ip6->ip6_src);
	inet_pton(AF_INET6, dst_ip, &ip6->ip6_dst);
	syn_header(tcp, dport);
	return send_frame(out_if, to_if, frame, sizeof(frame), ETH_P_IPV6);
}
