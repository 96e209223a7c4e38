"""SNMPv2c messages coded by hand, and the one UDP socket every request of a poller shares.

Why by hand: profiling a district poll showed ~75 % of the poller's CPU in pyasn1's generic BER decoder
(object creation per tag), ~0.15 ms per varbind. A v2c message is a fixed, tiny BER subset (RFC 3416 §3:
SEQUENCE, INTEGER, OCTET STRING, OID and the SMI application types), so a specialised codec decodes a
village's answer for a few per cent of that cost. SNMPv3 wraps the same PDUs (`encode_pdu`, `decode_pdu`) in
its USM security (probes/snmp_v3.py) and shares the socket. Tested against pysnmp's own codec
(tests/test_snmp.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

Oid = tuple[int, ...]

TAG_GET, TAG_BULK, TAG_RESPONSE = 0xA0, 0xA5, 0xA2
_NO_SUCH_OBJECT, _NO_SUCH_INSTANCE, _END_OF_MIB = NoSuchObject(""), NoSuchInstance(""), EndOfMibView("")
_EXCEPTIONS = {0x80: _NO_SUCH_OBJECT, 0x81: _NO_SUCH_INSTANCE, 0x82: _END_OF_MIB}
_UNSIGNED = frozenset((0x41, 0x42, 0x43, 0x46, 0x47))  # Counter32, Gauge32, TimeTicks, Counter64, UInteger32
_BYTES = frozenset((0x04, 0x40, 0x44))  # OCTET STRING, IpAddress, Opaque
_OID_CACHE: dict[bytes, Oid] = {}
_ENCODED_OIDS: dict[Oid, bytes] = {}
_CACHE_LIMIT = 200_000


def ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + ber_len(len(value)) + value


def ber_int(n: int) -> bytes:
    return tlv(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))


def encode_varbind(oid: Oid) -> bytes:
    """SEQUENCE { oid, NULL } for a request, cached: a district asks for the same few hundred OIDs each poll."""
    got = _ENCODED_OIDS.get(oid)
    if got is None:
        body = bytearray()
        for arc in (40 * oid[0] + oid[1], *oid[2:]):
            chunk = [arc & 0x7F]
            arc >>= 7
            while arc:
                chunk.append(0x80 | (arc & 0x7F))
                arc >>= 7
            body += bytes(reversed(chunk))
        got = tlv(0x30, tlv(0x06, bytes(body)) + b"\x05\x00")
        if len(_ENCODED_OIDS) < _CACHE_LIMIT:
            _ENCODED_OIDS[oid] = got
    return got


def encode_pdu(tag: int, request_id: int, a: int, b: int, varbinds: bytes) -> bytes:
    """A GET (a = b = 0) or GETBULK (a non-repeaters, b max-repetitions) PDU around encoded varbinds: the part
    v2c and v3 messages share (SNMPv3 wraps it in a scoped PDU, probes/snmp_v3.py)."""
    return tlv(tag, ber_int(request_id) + ber_int(a) + ber_int(b) + tlv(0x30, varbinds))


def encode_request(community: bytes, tag: int, request_id: int, a: int, b: int, varbinds: bytes) -> bytes:
    """A v2c GET (a = b = 0) or GETBULK (a non-repeaters, b max-repetitions) around encoded varbinds."""
    return tlv(0x30, b"\x02\x01\x01" + tlv(0x04, community) + encode_pdu(tag, request_id, a, b, varbinds))


def decode_oid(raw: bytes) -> Oid:
    got = _OID_CACHE.get(raw)
    if got is not None:
        return got
    arcs = []
    n = 0
    for c in raw:
        n = (n << 7) | (c & 0x7F)
        if not c & 0x80:
            arcs.append(n)
            n = 0
    if n or not arcs:
        raise ValueError("truncated OID")
    first = arcs[0]
    got = (first // 40, first % 40, *arcs[1:]) if first < 80 else (2, first - 80, *arcs[1:])
    if len(_OID_CACHE) < _CACHE_LIMIT:
        _OID_CACHE[raw] = got
    return got


def ber_header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, length, where the value starts) of the TLV at pos."""
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[pos : pos + k], "big")
        pos += k
    return tag, n, pos


def peek_request_id(data: bytes) -> int | None:
    """What an answer is matched by: a v2c Response's request-id, or an SNMPv3 message's msgID (in clear
    before the encrypted part; the poller gives a v3 request's msgID and request-id the same value). None for
    anything else; the full decode checks the rest."""
    try:
        _, _, p = ber_header(data, 0)  # Message
        _, n, p = ber_header(data, p)  # version
        if data[p : p + n] == b"\x03":
            _, _, p = ber_header(data, p + n)  # HeaderData
            _, n, p = ber_header(data, p)  # msgID
            return int.from_bytes(data[p : p + n], "big", signed=True)
        _, n, p = ber_header(data, p + n)  # community
        tag, _, p = ber_header(data, p + n)  # PDU
        if tag != TAG_RESPONSE:
            return None
        _, n, p = ber_header(data, p)
        return int.from_bytes(data[p : p + n], "big", signed=True)
    except IndexError:
        return None


def decode_response(data: bytes) -> tuple[int, int, list[tuple[Oid, Any]]]:
    """(error-status, error-index, [(oid, value)]) of a v2c Response. Values: int for INTEGER and the
    unsigned SMI types, bytes for strings and addresses, an OID as a tuple, pysnmp's NoSuchObject /
    NoSuchInstance / EndOfMibView for the exceptions."""
    _, n, p = ber_header(data, 0)
    if p + n != len(data):
        raise ValueError("message length does not match the datagram")
    _, n, p = ber_header(data, p)
    _, n, p = ber_header(data, p + n)  # community
    _, _, status, index, out = decode_pdu(data, p + n)
    return status, index, out


def decode_pdu(data: bytes, p: int) -> tuple[int, int, int, int, list[tuple[Oid, Any]]]:
    """(PDU tag, request-id, error-status, error-index, [(oid, value)]) of the PDU at `p`; values as
    decode_response gives them (a request's NULLs as None). Bytes after the PDU are not looked at: an SNMPv3
    scoped PDU decrypted from DES comes with padding."""
    tag, n, p = ber_header(data, p)  # PDU
    if p + n > len(data):
        raise ValueError("PDU overruns the message")
    _, n, p = ber_header(data, p)  # request-id
    request_id = int.from_bytes(data[p : p + n], "big", signed=True)
    _, n2, p = ber_header(data, p + n)
    status = int.from_bytes(data[p : p + n2], "big")
    _, n3, p = ber_header(data, p + n2)
    index = int.from_bytes(data[p : p + n3], "big")
    _, n, p = ber_header(data, p + n3)  # varbind list
    end = p + n
    if end > len(data):
        raise ValueError("varbind list overruns the message")
    out: list[tuple[Oid, Any]] = []
    append = out.append
    while p < end:
        _, _, p = ber_header(data, p)  # varbind SEQUENCE
        _, n, p = ber_header(data, p)
        oid = decode_oid(data[p : p + n])
        p += n
        tag_v, n, p = ber_header(data, p)
        raw = data[p : p + n]
        p += n
        if tag_v == 0x02:
            append((oid, int.from_bytes(raw, "big", signed=True)))
        elif tag_v in _UNSIGNED:
            append((oid, int.from_bytes(raw, "big")))
        elif tag_v in _BYTES:
            append((oid, raw))
        elif tag_v == 0x06:
            append((oid, decode_oid(raw)))
        else:
            append((oid, _EXCEPTIONS.get(tag_v)))
    if p != end:
        raise ValueError("varbind list overruns its length")
    return tag, request_id, status, index, out


class SnmpSocket(asyncio.DatagramProtocol):
    """One UDP socket for every request of a poller, v2c and v3: requests are told apart by request-id (v3:
    msgID, see peek_request_id), and an answer counts only from the address it was sent to. Timeouts and
    retries follow pysnmp's meaning (`timeout` per try, `retries` extra tries, the same message re-sent)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[bytes], tuple[str, int]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        rid = peek_request_id(data)
        entry = self.pending.get(rid) if rid is not None else None
        if entry is None:
            return
        future, want = entry
        if (str(addr[0]), int(addr[1])) == want and not future.done():
            future.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: the request times out in its own time
        pass

    def close(self, reason: Exception) -> None:
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(reason)
        self.pending.clear()
        if self.transport is not None:
            self.transport.close()
