"""SNMPv3 messages with USM authentication and privacy (RFC 3414, RFC 3826, RFC 7860) coded by hand.

Why by hand: through pysnmp's engine (message processing, USM, pyasn1 BER on every layer) an authPriv poll of
one village cost ~25 ms of CPU against ~1.1 ms for the same reads over the hand-coded v2c path (bench/snmp,
docs/performance.md "SNMP"): 1,000 SNMPv3 villages took ~25 s of CPU per poll. The per-message work that USM
adds to a v2c PDU is small and fixed: a header of four integers, the security parameters, one HMAC over the
message and one AES-CFB (or DES-CBC) pass over the scoped PDU, both done by C code (hashlib, `cryptography`).
So the PDU is the v2c codec's (probes/snmp_v2c.py `encode_pdu` / `decode_pdu`) and only the USM wrapping is
here; with it an authPriv village costs about as much as a v2c one (figures in docs/performance.md).

What stays with pysnmp: turning pass phrases into keys (RFC 3414 §A.2: hashing 1 MB, once per pass phrase)
and localizing them to an engine ID (once per agent), including the AES-192/256 key extension vendors use.
Neither is per message, and reusing them keeps the keys exactly what they were before this module.

Every protocol SnmpSettings accepts takes this path: authentication HMAC-MD5-96, HMAC-SHA-96 and the RFC 7860
HMAC-SHA-2 family (SHA224/256/384/512); privacy AES-128 (RFC 3826), AES-192/256 (the same CFB mode with the
Reeder key extension, pysnmp's usmAesCfb192/256Protocol) and DES (RFC 3414 §8, CBC). Checked against pysnmp
as an in-process agent for every pair and against net-snmp's snmpd for those it offers (tests/test_snmp_v3.py).

Pure computation: messages in, messages out. The poller (probes/snmp.py) sends them over its shared socket,
keeps each agent's `Engine`, and turns `UsmError` kinds into words. No secret appears in any repr or error.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from pysnmp.entity import config as _config
from pysnmp.proto.rfc1902 import OctetString

from desanet.probes.snmp_v2c import (
    TAG_GET,
    TAG_RESPONSE,
    Oid,
    ber_header,
    ber_int,
    decode_pdu,
    encode_pdu,
    tlv,
)

try:  # "decrepit" holds TripleDES (for single DES) since cryptography 43 and CFB since 47; before, primitives
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CBC

TAG_REPORT = 0xA8
FLAG_AUTH, FLAG_PRIV, FLAG_REPORTABLE = 0x01, 0x02, 0x04
USM = 3  # msgSecurityModel
MAX_SIZE = 65507  # msgMaxSize: what a UDP datagram holds, as net-snmp and pysnmp say
TIME_WINDOW = 150  # seconds (RFC 3414 §3.2 step 7)
_MAX_INT = 2**31 - 1
_KEYS_KEPT = 100_000  # localized key sets per user: a district's engines, with room for their restarts

# name → (hashlib name, octets of the MAC in the message, pysnmp's protocol id for key derivation)
AUTH: dict[str, tuple[str, int, tuple[int, ...]]] = {
    "MD5": ("md5", 12, _config.USM_AUTH_HMAC96_MD5),
    "SHA": ("sha1", 12, _config.USM_AUTH_HMAC96_SHA),
    "SHA224": ("sha224", 16, _config.USM_AUTH_HMAC128_SHA224),
    "SHA256": ("sha256", 24, _config.USM_AUTH_HMAC192_SHA256),
    "SHA384": ("sha384", 32, _config.USM_AUTH_HMAC256_SHA384),
    "SHA512": ("sha512", 48, _config.USM_AUTH_HMAC384_SHA512),
}
# name → (AES key octets, 0 for DES; pysnmp's protocol id). AES is RFC 3826 AES-128; for 192/256 bits the
# Reeder key extension (pysnmp's USM_PRIV_CFB192/256_AES) is what Cisco and most vendors ship.
PRIV: dict[str, tuple[int, tuple[int, ...]]] = {
    "AES": (16, _config.USM_PRIV_CFB128_AES),
    "AES192": (24, _config.USM_PRIV_CFB192_AES),
    "AES256": (32, _config.USM_PRIV_CFB256_AES),
    "DES": (0, _config.USM_PRIV_CBC56_DES),
}

# RFC 3414 §5 usmStats, RFC 3412 §5 snmpMPDStats, RFC 3413 snmpUnavailable/UnknownContexts: what a Report
# says went wrong, by the names pysnmp gives the same indications (probes/snmp.py words them).
REPORTS: dict[Oid, str] = {
    (1, 3, 6, 1, 6, 3, 15, 1, 1, 1, 0): "UnsupportedSecLevel",
    (1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0): "NotInTimeWindow",
    (1, 3, 6, 1, 6, 3, 15, 1, 1, 3, 0): "UnknownUserName",
    (1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0): "UnknownEngineID",
    (1, 3, 6, 1, 6, 3, 15, 1, 1, 5, 0): "WrongDigest",
    (1, 3, 6, 1, 6, 3, 15, 1, 1, 6, 0): "DecryptionError",
    (1, 3, 6, 1, 6, 3, 11, 2, 1, 1, 0): "UnknownSecurityModel",
    (1, 3, 6, 1, 6, 3, 11, 2, 1, 2, 0): "InvalidMsg",
    (1, 3, 6, 1, 6, 3, 11, 2, 1, 3, 0): "UnknownPDUHandler",
    (1, 3, 6, 1, 6, 3, 12, 1, 4, 0): "UnavailableContext",
    (1, 3, 6, 1, 6, 3, 12, 1, 5, 0): "UnknownContext",
}

# Salts: each encryption under a key needs its own (RFC 3826 §3.1.1.1: a 64-bit counter from a random start;
# RFC 3414 §8.1.1.1 for DES: 32 bits after engineBoots). One counter for the process serves every key.
_salt = int.from_bytes(os.urandom(8), "big")


def _next_salt() -> int:
    global _salt
    _salt = (_salt + 1) & 0xFFFFFFFFFFFFFFFF
    return _salt


class UsmError(Exception):
    """An SNMPv3 answer that is not the data asked for. `kind` names the indication as pysnmp does
    ("WrongDigest", "NotInTimeWindow", …); `engine` is what a Report said of the agent's engine (ID, boots,
    time), which a caller may adopt before one retry. The message holds no secret."""

    def __init__(self, kind: str, engine: Engine | None = None):
        super().__init__(kind)
        self.kind = kind
        self.engine = engine


@dataclass
class Engine:
    """What a manager knows of one agent's SNMP engine (RFC 3414 §2.3): its ID, and its boots and time as
    last heard, with the monotonic clock then, so that a request carries the agent's time of now."""

    engine_id: bytes
    boots: int
    time: int
    at: float = field(default_factory=monotonic)

    def time_now(self, now: float | None = None) -> int:
        return min(_MAX_INT, self.time + int((monotonic() if now is None else now) - self.at))

    def heard(self, boots: int, etime: int, now: float | None = None) -> None:
        """Take an authenticated message's boots and time when newer (RFC 3414 §3.2 step 7b)."""
        if boots > self.boots or (boots == self.boots and etime > self.time_now(now)):
            self.boots, self.time, self.at = boots, etime, monotonic() if now is None else now

    def in_window(self, boots: int, etime: int, now: float | None = None) -> bool:
        """Whether an authenticated message from the agent is timely (RFC 3414 §3.2 step 7b), i.e. no replay."""
        return boots != _MAX_INT and (
            boots > self.boots or (boots == self.boots and etime >= self.time_now(now) - TIME_WINDOW)
        )


@dataclass(frozen=True)
class Keys:
    """A user's keys localized to one engine ID, with what each message needs of them ready."""

    auth: bytes = field(repr=False)
    priv: bytes = field(repr=False)
    hash_name: str
    mac_size: int
    aes: AES | None = field(default=None, repr=False)  # None: DES


class User:
    """One USM user's credentials: master keys hashed once from the pass phrases, keys localized once per
    engine ID (RFC 3414 §2.6). The pass phrases are not kept, and nothing secret is in repr()."""

    def __init__(self, name: str, auth_protocol: str, auth_key: str, priv_protocol: str, priv_key: str):
        auth_protocol, priv_protocol = auth_protocol.upper(), priv_protocol.upper()
        if auth_protocol not in AUTH or priv_protocol not in PRIV:
            raise ValueError(f"SNMPv3 protocols {auth_protocol}/{priv_protocol}: not supported here")
        self.name = name.encode()
        self.auth_protocol, self.priv_protocol = auth_protocol, priv_protocol
        self._hash_name, self._mac_size, self._auth_id = AUTH[auth_protocol]
        self._aes_size, self._priv_id = PRIV[priv_protocol]
        self._master_auth = bytes(_config.AUTH_SERVICES[self._auth_id].hash_passphrase(auth_key.encode()))
        self._master_priv = bytes(
            _config.PRIV_SERVICES[self._priv_id].hash_passphrase(self._auth_id, priv_key.encode())
        )
        self._keys: dict[bytes, Keys] = {}

    def __repr__(self) -> str:
        return f"User({self.name.decode(errors='replace')!r}, {self.auth_protocol}, {self.priv_protocol})"

    def keys(self, engine_id: bytes) -> Keys:
        got = self._keys.get(engine_id)
        if got is None:
            if len(self._keys) >= _KEYS_KEPT:  # agents that restart with a new engine ID each time
                self._keys.clear()
            eid = OctetString(engine_id)
            auth = bytes(_config.AUTH_SERVICES[self._auth_id].localize_key(self._master_auth, eid))
            priv = bytes(_config.PRIV_SERVICES[self._priv_id].localize_key(self._auth_id, self._master_priv, eid))
            aes = AES(priv[: self._aes_size]) if self._aes_size else None
            got = self._keys[engine_id] = Keys(auth, priv, self._hash_name, self._mac_size, aes)
        return got


# ---------------------------------------------------------------------------------------------- privacy
def _encrypt(keys: Keys, boots: int, etime: int, plain: bytes) -> tuple[bytes, bytes]:
    """(msgPrivacyParameters, ciphertext) of a scoped PDU."""
    if keys.aes is not None:  # RFC 3826 §3.1.3: IV = engineBoots ‖ engineTime ‖ salt, CFB-128
        salt = _next_salt().to_bytes(8, "big")
        enc = Cipher(keys.aes, CFB(boots.to_bytes(4, "big") + etime.to_bytes(4, "big") + salt)).encryptor()
        return salt, enc.update(plain) + enc.finalize()
    # RFC 3414 §8.1.1: DES-CBC, key the first 8 octets, IV the last 8 XOR salt (engineBoots ‖ counter)
    salt = boots.to_bytes(4, "big") + (_next_salt() & 0xFFFFFFFF).to_bytes(4, "big")
    iv = bytes(a ^ b for a, b in zip(keys.priv[8:16], salt, strict=True))
    plain += b"\x00" * (-len(plain) % 8)
    enc = Cipher(TripleDES(keys.priv[:8] * 3), CBC(iv)).encryptor()  # 3DES with K1 = K2 = K3 is DES
    return salt, enc.update(plain) + enc.finalize()


def _decrypt(keys: Keys, boots: int, etime: int, salt: bytes, data: bytes) -> bytes:
    if len(salt) != 8:
        raise UsmError("DecryptionError")
    if keys.aes is not None:
        dec = Cipher(keys.aes, CFB(boots.to_bytes(4, "big") + etime.to_bytes(4, "big") + salt)).decryptor()
        return dec.update(data) + dec.finalize()
    if len(data) % 8:
        raise UsmError("DecryptionError")
    iv = bytes(a ^ b for a, b in zip(keys.priv[8:16], salt, strict=True))
    dec = Cipher(TripleDES(keys.priv[:8] * 3), CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


# ---------------------------------------------------------------------------------------------- encoding
def _global(msg_id: int, flags: int) -> bytes:
    """msgVersion 3 and HeaderData."""
    return b"\x02\x01\x03" + tlv(0x30, ber_int(msg_id) + ber_int(MAX_SIZE) + bytes((0x04, 1, flags)) + b"\x02\x01\x03")


def encode_discovery(msg_id: int) -> bytes:
    """An unauthenticated GET with no varbinds and no engine ID: the agent answers with a Report
    (usmStatsUnknownEngineIDs) that tells its engine ID, boots and time (RFC 3414 §4)."""
    scoped = tlv(0x30, b"\x04\x00\x04\x00" + encode_pdu(TAG_GET, msg_id, 0, 0, b""))
    security = tlv(0x04, tlv(0x30, b"\x04\x00\x02\x01\x00\x02\x01\x00\x04\x00\x04\x00\x04\x00"))
    return tlv(0x30, _global(msg_id, FLAG_REPORTABLE) + security + scoped)


def encode_request(
    user: User, engine: Engine, msg_id: int, tag: int, a: int, b: int, varbinds: bytes, now: float | None = None
) -> bytes:
    """An authPriv GET (a = b = 0) or GETBULK (non-repeaters a, max-repetitions b) of encoded varbinds, with
    request-id = msgID, for the agent's engine as known; reportable, so errors come back as Reports."""
    keys = user.keys(engine.engine_id)
    eid, boots, etime = engine.engine_id, engine.boots, engine.time_now(now)
    scoped = tlv(0x30, tlv(0x04, eid) + b"\x04\x00" + encode_pdu(tag, msg_id, a, b, varbinds))
    salt, encrypted = _encrypt(keys, boots, etime, scoped)
    # The MAC covers the whole message with its own field zeroed (RFC 3414 §6.3.1): build it with zeros,
    # knowing where they sit, then put the MAC in their place.
    head = tlv(0x04, eid) + ber_int(boots) + ber_int(etime) + tlv(0x04, user.name)
    mac_field = tlv(0x04, bytes(keys.mac_size))
    inner = head + mac_field + tlv(0x04, salt)
    params = tlv(0x30, inner)
    security = tlv(0x04, params)
    front = _global(msg_id, FLAG_AUTH | FLAG_PRIV | FLAG_REPORTABLE)
    body = front + security + tlv(0x04, encrypted)
    msg = tlv(0x30, body)
    at = (
        len(msg) - len(body)
        + len(front)
        + len(security) - len(params)
        + len(params) - len(inner)
        + len(head)
        + len(mac_field) - keys.mac_size
    )  # fmt: skip
    mac = hmac.digest(keys.auth, msg, keys.hash_name)[: keys.mac_size]
    return msg[:at] + mac + msg[at + keys.mac_size :]


# ---------------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Message:
    """An SNMPv3 message taken apart (RFC 3412 §6, RFC 3414 §2.4), nothing verified yet."""

    msg_id: int
    flags: int
    engine_id: bytes
    boots: int
    time: int
    user: bytes
    mac_at: int  # where msgAuthenticationParameters' value starts in the datagram
    mac: bytes
    salt: bytes  # msgPrivacyParameters
    data: bytes  # the encrypted scoped PDU (FLAG_PRIV) or the plaintext scoped PDU's TLV


def _field(data: bytes, p: int, want: int) -> tuple[int, int]:
    """(start of value, end) of the TLV at p, which must have tag `want`."""
    tag, n, v = ber_header(data, p)
    if tag != want or v + n > len(data):
        raise ValueError(f"expected tag {want:#x} at {p}")
    return v, v + n


def _int_at(data: bytes, p: int) -> tuple[int, int]:
    v, end = _field(data, p, 0x02)
    return int.from_bytes(data[v:end], "big", signed=True), end


def parse_message(data: bytes) -> Message:
    """Take an SNMPv3 message apart; ValueError when it is not one (IndexError is turned into that too)."""
    try:
        p, end = _field(data, 0, 0x30)
        if end != len(data):
            raise ValueError("message length does not match the datagram")
        version, p = _int_at(data, p)
        if version != 3:
            raise ValueError("not SNMPv3")
        p, header_end = _field(data, p, 0x30)
        msg_id, p = _int_at(data, p)
        _max, p = _int_at(data, p)
        v, p = _field(data, p, 0x04)
        flags = data[v] if p - v == 1 else -1
        model, p = _int_at(data, p)
        if flags < 0 or model != USM or p != header_end:
            raise ValueError("not a USM message")
        p, security_end = _field(data, header_end, 0x04)
        p, _ = _field(data, p, 0x30)
        v, p = _field(data, p, 0x04)
        engine_id = data[v:p]
        boots, p = _int_at(data, p)
        etime, p = _int_at(data, p)
        v, p = _field(data, p, 0x04)
        user = data[v:p]
        mac_at, p = _field(data, p, 0x04)
        mac = data[mac_at:p]
        v, p = _field(data, p, 0x04)
        salt = data[v:p]
        if p != security_end:
            raise ValueError("security parameters overrun")
        if flags & FLAG_PRIV:
            v, p = _field(data, security_end, 0x04)
            payload = data[v:p]
        else:
            _, p = _field(data, security_end, 0x30)
            payload = data[security_end:p]
        if p != len(data):
            raise ValueError("bytes after the scoped PDU")
    except IndexError:
        raise ValueError("truncated SNMPv3 message") from None
    return Message(msg_id, flags, engine_id, boots, etime, user, mac_at, mac, salt, payload)


def _scoped_pdu(scoped: bytes) -> tuple[int, int, int, int, list[tuple[Oid, Any]]]:
    """The PDU of a ScopedPDU (contextEngineID and contextName skipped)."""
    p, _ = _field(scoped, 0, 0x30)
    _, p = _field(scoped, p, 0x04)
    _, p = _field(scoped, p, 0x04)
    return decode_pdu(scoped, p)


def _report_kind(vbs: list[tuple[Oid, Any]]) -> str:
    return REPORTS.get(vbs[0][0], "Report " + ".".join(map(str, vbs[0][0]))) if vbs else "Report"


def read_discovery(data: bytes, now: float | None = None) -> Engine:
    """The agent's engine from its answer to encode_discovery (a Report, normally: its security parameters
    hold the engine ID, boots and time). UsmError when it tells no engine ID; ValueError when not SNMPv3."""
    msg = parse_message(data)
    if not msg.engine_id:
        kind = "NoEngineID"
        if not msg.flags & FLAG_PRIV:
            try:
                tag, _, _, _, vbs = _scoped_pdu(msg.data)
                kind = _report_kind(vbs) if tag == TAG_REPORT else kind
            except (IndexError, ValueError):
                pass
        raise UsmError(kind)
    return Engine(msg.engine_id, msg.boots, msg.time, monotonic() if now is None else now)


def _verify(keys: Keys, msg: Message, data: bytes) -> bool:
    if len(msg.mac) != keys.mac_size:
        return False
    zeroed = data[: msg.mac_at] + bytes(keys.mac_size) + data[msg.mac_at + keys.mac_size :]
    return hmac.compare_digest(hmac.digest(keys.auth, zeroed, keys.hash_name)[: keys.mac_size], msg.mac)


def decode_response(
    data: bytes, user: User, engine: Engine, msg_id: int, now: float | None = None
) -> tuple[int, int, list[tuple[Oid, Any]]]:
    """(error-status, error-index, [(oid, value)]) of the agent's authPriv Response to request `msg_id`, its
    MAC checked and its time window kept (`engine` learns the agent's newer boots and time). A Report comes
    back as UsmError of its kind: NotInTimeWindow and UnknownEngineID carry the engine the agent reported, for
    one retry. ValueError when the datagram is not SNMPv3 at all."""
    msg = parse_message(data)
    if msg.msg_id != msg_id:
        raise ValueError("msgID does not match the request")
    reported = Engine(msg.engine_id, msg.boots, msg.time, monotonic() if now is None else now)
    authentic = False
    if msg.flags & FLAG_AUTH:
        if msg.user != user.name or msg.engine_id != engine.engine_id:
            raise UsmError("UnknownEngineID" if msg.engine_id != engine.engine_id else "UnknownUserName", reported)
        if not _verify(user.keys(msg.engine_id), msg, data):
            raise UsmError("WrongDigest")
        authentic = True
    if msg.flags & FLAG_PRIV:
        if not authentic:
            raise UsmError("UnsupportedSecLevel")  # privacy without authentication does not exist (RFC 3414)
        scoped = _decrypt(user.keys(msg.engine_id), msg.boots, msg.time, msg.salt, msg.data)
    else:
        scoped = msg.data
    try:
        tag, request_id, status, index, vbs = _scoped_pdu(scoped)
    except (IndexError, ValueError):
        if msg.flags & FLAG_PRIV:
            raise UsmError("DecryptionError") from None
        raise
    if tag == TAG_REPORT:
        # A Report's engine, boots and time are what the caller may adopt for its one retry. net-snmp and
        # pysnmp authenticate a notInTimeWindow Report (checked above); one that is not can at worst cost
        # that retry, as a dropped answer would.
        kind = _report_kind(vbs)
        if kind in ("NotInTimeWindow", "UnknownUserName") and msg.engine_id and msg.engine_id != engine.engine_id:
            # Said by another engine than the one addressed (pysnmp answers a foreign engine ID so): its clock
            # or user table is not our engine's; the agent's engine changed.
            kind = "UnknownEngineID"
        raise UsmError(kind, reported if reported.engine_id else None)
    if tag != TAG_RESPONSE or not authentic or not msg.flags & FLAG_PRIV:
        raise UsmError("UnsupportedSecLevel")  # an answer to an authPriv request comes with authPriv only
    if not engine.in_window(msg.boots, msg.time, now):
        raise UsmError("NotInTimeWindow")  # a replayed answer: nothing in it to adopt
    engine.heard(msg.boots, msg.time, now)
    if request_id != msg_id:
        raise ValueError("request-id does not match the msgID")
    return status, index, vbs
