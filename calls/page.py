"""The call page both ends open: camera and microphone (fake ones in headless Chromium), one RTCPeerConnection,
signalling by plain HTTP polling against desanet, and `getStats()` posted back once a second.

One page for both roles: the village side makes the offer, the far end at the NOC answers. Candidates are
gathered before the description is sent (no trickle): a call between a village and the NOC has host candidates
only, gathered in milliseconds, and one POST each way is simpler to follow than a candidate stream.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PageConfig:
    """What the page needs: who it is, the profile's picture and bitrate, and where to report."""

    call_id: str
    role: str  # "village" (offers) or "farend" (answers)
    width: int
    height: int
    fps: int
    kbit: int  # the sender's ceiling and (x-google-start-bitrate) where it starts


# Plain JavaScript, no framework: it has to run in whatever browser the kantor desa has.
_SCRIPT = r"""
const C = JSON.parse(document.getElementById('cfg').textContent);
const base = '/call/' + encodeURIComponent(C.call_id);
const other = C.role === 'village' ? 'farend' : 'village';
const status = (s) => { document.getElementById('status').textContent = s; };
let stopped = false;

async function post(path, body) {
  const r = await fetch(base + path, {method: 'POST', headers: {'content-type': 'application/json'},
                                      body: JSON.stringify(body)});
  return r.ok ? r.json() : {};
}
function report(ev) { post('/event/' + C.role, ev).catch(() => {}); }
window.addEventListener('error', (e) => report({error: String(e.message)}));
window.addEventListener('unhandledrejection', (e) => report({error: String(e.reason)}));

// Chrome starts a call at 300 kbit/s and may stay at 320x180 for a long while; a real webcam call of the
// profile starts near its bitrate, so the start bitrate is raised in the SDP (Chrome's own fmtp parameter).
function munge(sdp) {
  const lines = sdp.split('\r\n');
  const fmtp = new Set();
  for (const l of lines) { const m = /^a=fmtp:(\d+) /.exec(l); if (m) fmtp.add(m[1]); }
  const start = 'x-google-start-bitrate=' + Math.round(C.kbit * 0.8);
  const out = []; let video = false; const pts = new Set();
  for (const l of lines) {
    if (l.startsWith('m=')) video = l.startsWith('m=video');
    const r = /^a=rtpmap:(\d+) (VP8|VP9|H264|AV1)\/90000/.exec(l);
    if (video && r) pts.add(r[1]);
    const f = /^a=fmtp:(\d+) /.exec(l);
    if (video && f && pts.has(f[1])) { out.push(l + ';' + start); continue; }
    out.push(l);
    if (video && r && !fmtp.has(r[1])) out.push('a=fmtp:' + r[1] + ' ' + start);
  }
  return out.join('\r\n');
}

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') resolve(); });
    setTimeout(resolve, 3000);
  });
}

async function poll(path) {
  for (;;) {
    const r = await fetch(base + path);
    if (r.status === 200) return r.json();
    if (r.status !== 204) throw new Error('signalling answered ' + r.status);
    await new Promise((ok) => setTimeout(ok, 200));
  }
}

const pick = (s, keys) => Object.fromEntries(keys.filter((k) => s[k] !== undefined).map((k) => [k, s[k]]));
const IN_VIDEO = ['framesPerSecond', 'frameWidth', 'frameHeight', 'framesDecoded', 'framesDropped', 'freezeCount',
  'totalFreezesDuration', 'pauseCount', 'totalPausesDuration', 'packetsLost', 'packetsReceived', 'nackCount',
  'bytesReceived', 'jitter', 'jitterBufferDelay', 'jitterBufferEmittedCount'];
const IN_AUDIO = ['concealedSamples', 'silentConcealedSamples', 'totalSamplesReceived', 'concealmentEvents',
  'packetsLost', 'packetsReceived', 'jitter', 'jitterBufferDelay', 'jitterBufferEmittedCount'];
const OUT_VIDEO = ['qualityLimitationReason', 'frameWidth', 'frameHeight', 'framesPerSecond', 'framesEncoded',
  'bytesSent', 'packetsSent', 'retransmittedPacketsSent', 'targetBitrate', 'nackCount'];
const OUT_AUDIO = ['bytesSent', 'packetsSent'];
const PAIR = ['currentRoundTripTime', 'availableOutgoingBitrate', 'bytesSent', 'bytesReceived'];

async function sample(pc) {
  const s = {t: performance.now() / 1000, connection: pc.connectionState};
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp') s['in_' + r.kind] = pick(r, r.kind === 'video' ? IN_VIDEO : IN_AUDIO);
    else if (r.type === 'outbound-rtp') s['out_' + r.kind] = pick(r, r.kind === 'video' ? OUT_VIDEO : OUT_AUDIO);
    else if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') s.pair = pick(r, PAIR);
  });
  return s;
}

async function main() {
  status('camera');
  const media = await navigator.mediaDevices.getUserMedia({
    audio: true,
    video: {width: {ideal: C.width}, height: {ideal: C.height}, frameRate: {ideal: C.fps}},
  });
  document.getElementById('self').srcObject = media;
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addEventListener('connectionstatechange', () => report({connection: pc.connectionState}));
  pc.addEventListener('track', (e) => { document.getElementById('remote').srcObject = e.streams[0]; });
  for (const t of media.getTracks()) pc.addTrack(t, media);
  status('signalling');
  if (C.role === 'village') {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    await post('/signal/village', {type: 'offer', sdp: munge(pc.localDescription.sdp)});
    await pc.setRemoteDescription(await poll('/signal/farend'));
  } else {
    await pc.setRemoteDescription(await poll('/signal/village'));
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    await post('/signal/farend', {type: 'answer', sdp: munge(pc.localDescription.sdp)});
  }
  // The profile's ceiling: the sender never goes past the bitrate and frame rate a real client would use.
  for (const s of pc.getSenders()) {
    if (!s.track || s.track.kind !== 'video') continue;
    const p = s.getParameters();
    if (!p.encodings || !p.encodings.length) p.encodings = [{}];
    p.encodings[0].maxBitrate = C.kbit * 1000;
    p.encodings[0].maxFramerate = C.fps;
    await s.setParameters(p);
  }
  status('call');
  const timer = setInterval(async () => {
    if (stopped) return;
    try {
      const answer = await post('/stats/' + C.role, await sample(pc));
      if (answer.stop) { stopped = true; clearInterval(timer); pc.close(); media.getTracks().forEach((t) => t.stop());
                         status('done'); }
    } catch (e) { /* the path may be down for a while: keep sampling, the server judges the gap */ }
  }, 1000);
}
main().catch((e) => { status('error: ' + e); report({error: String(e)}); });
"""


def render(cfg: PageConfig) -> bytes:
    """The page, with its configuration as JSON in a script element (escaped so no value can close it)."""
    cfg_json = json.dumps(asdict(cfg)).replace("<", "\\u003c")
    title = html.escape(f"desanet call {cfg.call_id} ({cfg.role})")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body>"
        f"<p id='status'>start</p>"
        "<video id='self' autoplay muted playsinline width='160'></video>"
        "<video id='remote' autoplay playsinline width='320'></video>"
        f"<script type='application/json' id='cfg'>{cfg_json}</script>"
        f"<script>{_SCRIPT}</script></body></html>"
    ).encode()
