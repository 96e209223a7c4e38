"""Pure judgement: from measurements to a verdict. No I/O, no Prometheus, no network.

`readiness` holds the per-factor checks against a profile's limits, the limiting factor, the E-model MOS and
the verdict (ready / at risk / not ready); `ports` the spare capacity on a router's busiest port between two
SNMP polls. The exporter, the technician's check and the lab all judge with these same functions.
"""
