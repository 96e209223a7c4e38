"""Real WebRTC calls: the far end desanet runs at the NOC, the call page, signalling and the test pattern.

Used by the lab (`desanet lab call`) and, later, by the exporter's rehearsal page, so it imports neither.
"""
