"""The bandwidth-test budget: when a throughput test may run on a village's link, and what it may spend.

Shared by the exporter's scheduler, the technician's check and the CLI, so every path that fills a link obeys
the same three rules (no test during a session, one test per kecamatan uplink, a daily budget per village),
and every test is charged what it moved however it ends (ledger.py says how, ending by ending).
"""

from desanet.budget.ledger import (
    LEDGER_FILE,
    Ledger,
    Refused,
    Reservation,
    TestSlot,
    UplinkLock,
    Usage,
    acquire_test_slot,
    budget_day,
    state_dir,
)

__all__ = [
    "LEDGER_FILE",
    "Ledger",
    "Refused",
    "Reservation",
    "TestSlot",
    "UplinkLock",
    "Usage",
    "acquire_test_slot",
    "budget_day",
    "state_dir",
]
