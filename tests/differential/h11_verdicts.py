"""Reads request heads from the file named by argv[1] (each a 4-byte
big-endian length, then the bytes) and prints one verdict per head, as h11
(a strict, independent HTTP/1.1 parser) sees it: "accept" when it yields a
Request, "reject" when it raises a protocol error, "incomplete" when it
wants more bytes."""
import struct
import sys

import h11


def verdict(data):
    conn = h11.Connection(our_role=h11.SERVER)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return "reject"
    if event is h11.NEED_DATA:
        return "incomplete"
    if isinstance(event, h11.Request):
        return "accept"
    return "reject"


def main():
    raw = open(sys.argv[1], "rb").read()
    out = []
    at = 0
    while at < len(raw):
        (n,) = struct.unpack(">I", raw[at : at + 4])
        at += 4
        out.append(verdict(raw[at : at + n]))
        at += n
    sys.stdout.write("\n".join(out) + "\n")


main()
