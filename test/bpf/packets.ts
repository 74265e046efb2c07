// Crafted packets for BPF_PROG_TEST_RUN of the tc program (the kernel needs at least 14 bytes).
export const TC_ACT_OK = 0;
export const TC_ACT_REDIRECT = 7;
export const SYN = 0x02;
export const RST = 0x04;
export const ACK = 0x10;

/** Ethernet + IPv4 + TCP (no options), checksums left zero: the program does not check them. */
export function tcpPacket(src: string, dst: string, sport: number, dport: number, flags: number): Uint8Array {
  const b = Buffer.alloc(14 + 20 + 20);
  Buffer.from('020000000001', 'hex').copy(b, 0);
  Buffer.from('020000000002', 'hex').copy(b, 6);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(40, 16);
  b[22] = 64;
  b[23] = 6;
  Buffer.from(src.split('.').map(Number)).copy(b, 26);
  Buffer.from(dst.split('.').map(Number)).copy(b, 30);
  b.writeUInt16BE(sport, 34);
  b.writeUInt16BE(dport, 36);
  b[46] = 0x50;
  b[47] = flags;
  return new Uint8Array(b);
}

/** A struct __sk_buff (192 bytes) whose ingress_ifindex (offset 36) says where the packet entered the
 * node: 0, the default, is a packet the node made itself, which the program passes. */
export function skbCtx(ingressIfindex: number): Uint8Array {
  const b = Buffer.alloc(192);
  b.writeUInt32LE(ingressIfindex, 36);
  return new Uint8Array(b);
}
