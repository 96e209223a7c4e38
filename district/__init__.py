"""The district model: what an inventory says (kecamatan, villages, routers, profiles, sessions, settings).

Everything else in desanet reads it; it reads nothing of desanet's. `model` holds the schema, `load` turns a
file into an Inventory or every problem as FILE:LINE:COL, `secrets` resolves secret references when a probe
needs them, `synth` writes synthetic districts and `targets` finds a village by what a person types.
"""

from desanet.district.load import (
    InventoryError,
    Problem,
    default_inventory_path,
    json_schema,
    load_inventory,
    parse_inventory,
)
from desanet.district.model import (
    DEFAULT_PROFILES,
    DEFAULT_TZ,
    Contract,
    Inventory,
    Kecamatan,
    Profile,
    Session,
    SnmpV2c,
    SnmpV3,
    Village,
)
from desanet.district.names import slugify
from desanet.district.secrets import EnvSecret, FileSecret, SecretError, resolve_secret

__all__ = [
    "DEFAULT_PROFILES",
    "DEFAULT_TZ",
    "Contract",
    "EnvSecret",
    "FileSecret",
    "Inventory",
    "InventoryError",
    "Kecamatan",
    "Problem",
    "Profile",
    "SecretError",
    "Session",
    "SnmpV2c",
    "SnmpV3",
    "Village",
    "default_inventory_path",
    "json_schema",
    "load_inventory",
    "parse_inventory",
    "resolve_secret",
    "slugify",
]
