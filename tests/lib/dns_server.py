#!/usr/bin/env python3
"""A name server for the interop tests: answers A, SRV and NAPTR queries from a zone file
given on the command line, over UDP on loopback. Python's standard library only.

Usage: dns_server.py PORT ZONE_FILE
Zone lines (one record each, '#' comments):
  NAME A ADDRESS
  NAME SRV PRIORITY WEIGHT PORT TARGET
  NAME NAPTR ORDER PREFERENCE FLAGS SERVICES REPLACEMENT
Names are absolute without the trailing dot. Other queries get NXDOMAIN (no records).
"""
import socket
import struct
import sys

TYPES = {"A": 1, "SRV": 33, "NAPTR": 35}


def encode_name(name):
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def read_name(data, offset):
    labels = []
    while True:
        length = data[offset]
        if length == 0:
            return ".".join(labels).lower(), offset + 1
        labels.append(data[offset + 1:offset + 1 + length].decode())
        offset += 1 + length


def rdata(kind, fields):
    if kind == "A":
        return socket.inet_aton(fields[0])
    if kind == "SRV":
        priority, weight, port, target = fields
        return struct.pack("!HHH", int(priority), int(weight), int(port)) + encode_name(target)
    if kind == "NAPTR":
        order, preference, flags, services, replacement = fields
        text = lambda s: bytes([len(s)]) + s.encode()
        return (struct.pack("!HH", int(order), int(preference)) + text(flags) + text(services)
                + text("") + encode_name(replacement))
    raise ValueError(kind)


def load(path):
    zone = {}
    for line in open(path):
        line = line.split("#", 1)[0].split()
        if line:
            name, kind, *fields = line
            zone.setdefault((name.lower().strip("."), TYPES[kind]), []).append(rdata(kind, fields))
    return zone


def main():
    port, zone = int(sys.argv[1]), load(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    while True:
        data, peer = sock.recvfrom(1500)
        try:
            ident, _flags, qdcount = struct.unpack("!HHH", data[:6])
            name, end = read_name(data, 12)
            qtype = struct.unpack("!H", data[end:end + 2])[0]
        except (struct.error, IndexError, UnicodeDecodeError):
            continue
        question = data[12:end + 4]
        answers = zone.get((name, qtype), [])
        known = any(n == name for n, _ in zone)
        flags = 0x8180 if known else 0x8183  # response, RD, RA; NXDOMAIN for unknown names
        reply = struct.pack("!HHHHHH", ident, flags, 1, len(answers), 0, 0) + question
        for rd in answers:
            reply += encode_name(name) + struct.pack("!HHIH", qtype, 1, 60, len(rd)) + rd
        sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
