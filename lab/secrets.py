"""The lab's SNMP secrets: lab-only values when the environment sets none, so `lab up` works out of the box.

A real inventory still refuses a missing secret everywhere else (`desanet check`, `serve`, `probe snmp`):
only the lab, whose agents it configures itself, may make one up, and it says so on stderr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from desanet.district import EnvSecret, FileSecret, Inventory, SecretError, SnmpV2c, SnmpV3, resolve_secret
from desanet.lab.topology import LabError

LAB_ONLY_PREFIX = "lab-only-"


def _secret_refs(inv: Inventory) -> list[EnvSecret | FileSecret]:
    refs: list[EnvSecret | FileSecret] = []
    for v in inv.villages:
        cfg = inv.snmp_for(v)
        if isinstance(cfg, SnmpV2c):
            refs.append(cfg.community)
        elif isinstance(cfg, SnmpV3):
            refs += [cfg.auth_key, cfg.priv_key]
    return refs


def lab_only_secrets(inv: Inventory, environ: Mapping[str, str]) -> dict[str, str]:
    """A value for each {env: NAME} secret of the inventory that `environ` does not set: the lab's own.

    Only the lab's agents accept these, so a first `desanet lab up` works with nothing exported, while a real
    inventory (`desanet check`, `serve`, `probe` outside the lab) still refuses a missing secret: nothing but
    `lab up` and `lab exec` uses them. Fixed, not random, so a person can type one (`snmpget -c ...`); at least
    8 characters, as SNMPv3 keys must be.
    """
    names = {r.env for r in _secret_refs(inv) if isinstance(r, EnvSecret) and not environ.get(r.env)}
    return {n: LAB_ONLY_PREFIX + n.lower().replace("_", "-") for n in sorted(names)}


def _resolver(fills: Mapping[str, str]) -> Any:
    def resolve(ref: EnvSecret | FileSecret) -> str:
        if isinstance(ref, EnvSecret) and ref.env in fills:
            return fills[ref.env]
        return resolve_secret(ref)

    return resolve


def _env_secrets(inv: Inventory, fills: Mapping[str, str]) -> dict[str, str]:
    """NAME -> value of every {env: NAME} secret the lab's agents were given (set or lab-only)."""
    resolve = _resolver(fills)
    return {r.env: resolve(r) for r in _secret_refs(inv) if isinstance(r, EnvSecret)}


def _agent_secrets(inv: Inventory, fills: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """What each village's snmpd must accept: the very secrets the probes will use."""
    resolve_secret = _resolver(fills or {})
    out: dict[str, dict[str, Any]] = {}
    for v in inv.villages:
        cfg = inv.snmp_for(v)
        try:
            if isinstance(cfg, SnmpV2c):
                out[v.slug] = {"community": resolve_secret(cfg.community)}
            elif isinstance(cfg, SnmpV3):
                out[v.slug] = {
                    "v3": {
                        "user": cfg.user,
                        "auth_protocol": cfg.auth_protocol,
                        "auth_key": resolve_secret(cfg.auth_key),
                        "priv_protocol": cfg.priv_protocol,
                        "priv_key": resolve_secret(cfg.priv_key),
                    }
                }
            else:
                out[v.slug] = {}
        except SecretError as exc:
            raise LabError(
                f"village {v.slug}: its SNMP secret cannot be read ({exc}); the lab's agent must "
                "accept the same secret the probes use"
            ) from None
    return out
