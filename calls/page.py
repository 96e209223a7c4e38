"""The call page both ends open: camera and microphone (fake ones in headless Chromium) or a generated test
pattern and tone, one RTCPeerConnection, signalling by plain HTTP polling against desanet, and `getStats()`
posted back once a second.

One page for both roles: the village side makes the offer, the far end at the NOC answers. Candidates are
gathered before the description is sent (no trickle): a call between a village and the NOC has host candidates
only, gathered in milliseconds, and one POST each way is simpler to follow than a candidate stream.

The rehearsal page (exporter/rehearse.py) is this page for the village role with `live` set: it lets the person
choose camera or test pattern, shows both directions' figures each second (its own inbound stats for down, the
far end's, handed back with each stats answer, for up) and then the judged outcome in the person's language
(calls/words.py). Everything is inline: nothing is fetched from anywhere but desanet itself.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import asdict, dataclass, field

SOURCES = ("camera", "pattern", "choose")


@dataclass(frozen=True)
class PageConfig:
    """What the page needs: who it is, the profile's picture and bitrate, and where to report."""

    call_id: str
    role: str  # "village" (offers) or "farend" (answers)
    width: int
    height: int
    fps: int
    kbit: int  # the sender's ceiling and (x-google-start-bitrate) where it starts
    base: str = "/call"  # where the call's requests go: /call/ID/... (the exporter mounts the village's elsewhere)
    key: str = ""  # sent with every request when set (the rehearsal's far end: serve has no password for it)
    source: str = "camera"  # camera (getUserMedia), pattern (canvas + oscillator), choose (two buttons)
    live: bool = False  # show both directions' figures, then poll for and show the outcome
    seconds: float = 0.0  # the call's length, for the countdown
    start_seconds: float = 0.0  # how long the person has to choose (the far end waits that long)
    lang: str = "en"
    title: str = ""
    intro: str = ""
    words: dict[str, str] = field(default_factory=dict)  # calls/words.page_words(lang)


# Plain JavaScript, no framework: it has to run in whatever browser the kantor desa has.
_SCRIPT = r"""
const C = JSON.parse(document.getElementById('cfg').textContent);
const W = C.words || {};
// Absolute, from the origin: a page opened as https://user:password@noc/... resolves relative URLs with those
// credentials in them, and fetch() refuses such URLs; the browser's auth cache supplies them instead.
const base = location.origin + C.base + '/' + encodeURIComponent(C.call_id);
const $ = (id) => document.getElementById(id);
const fill = (tpl, v) => tpl.replace(/\{(\w+)\}/g, (m, k) => (k in v ? String(v[k]) : m));
const say = (key, v, fallback) => (W[key] ? fill(W[key], v || {}) : fallback);
const status = (s) => { $('status').textContent = s; };
let stopped = false;
let hangup = () => {};

function url(path, extra) {
  const q = new URLSearchParams(extra || {});
  if (C.key) q.set('key', C.key);
  const qs = q.toString();
  return base + path + (qs ? '?' + qs : '');
}
async function post(path, body, extra) {
  const r = await fetch(url(path, extra), {method: 'POST', headers: {'content-type': 'application/json'},
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
    if (stopped) throw new Error('stopped');
    const r = await fetch(url(path));
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

async function camera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error(say('camera_needs_https', {}, 'getUserMedia needs a secure origin'));
  }
  return navigator.mediaDevices.getUserMedia({
    audio: true,
    video: {width: {ideal: C.width}, height: {ideal: C.height}, frameRate: {ideal: C.fps}},
  });
}

// The test pattern: what calls/y4m.py draws for the far end (grey blocks, each with a ramp, scrolling
// diagonally under sliding colour bands, so the encoder works about as hard as for a webcam picture of an
// office), drawn on a canvas, plus a tone that wanders in pitch and loudness, so Opus has something to code.
function pattern() {
  const w = C.width, h = C.height, B = 16;
  const tex = document.createElement('canvas');
  tex.width = 2 * w; tex.height = 2 * h;
  const tg = tex.getContext('2d');
  let seed = 14;
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  for (let y = 0; y < h; y += B) {
    for (let x = 0; x < w; x += B) {
      const v = 30 + Math.floor(rnd() * 196);
      const g = tg.createLinearGradient(x, y, x + B, y + B);
      g.addColorStop(0, `rgb(${v},${v},${v})`);
      const v2 = Math.min(255, v + 2 * B);
      g.addColorStop(1, `rgb(${v2},${v2},${v2})`);
      tg.fillStyle = g;
      tg.fillRect(x, y, B, B);
    }
  }
  tg.drawImage(tex, 0, 0, w, h, w, 0, w, h);
  tg.drawImage(tex, 0, 0, 2 * w, h, 0, h, 2 * w, h);
  const cv = document.createElement('canvas');
  cv.width = w; cv.height = h;
  const g = cv.getContext('2d');
  let i = 0;
  const draw = () => {
    g.drawImage(tex, -((i * 5) % w), -((i * 2) % h));
    for (let k = 0; k < 4; k++) {
      g.fillStyle = `hsla(${(k * 90 + i) % 360},70%,50%,0.25)`;
      g.fillRect((((k * w) / 4 - i * 3) % w + w) % w, 0, w / 8, h);
    }
    g.fillStyle = '#fff';
    g.font = `${Math.round(h / 12)}px sans-serif`;
    g.fillText('desanet ' + i, 10, h - 10);
    i++;
  };
  draw();
  const timer = setInterval(draw, 1000 / C.fps);
  const stream = cv.captureStream(C.fps);
  const Ctx = window.AudioContext || window.webkitAudioContext;
  const ac = new Ctx();
  const osc = ac.createOscillator(); osc.frequency.value = 440;
  const lfo = ac.createOscillator(); lfo.frequency.value = 0.5;
  const depth = ac.createGain(); depth.gain.value = 200;
  lfo.connect(depth).connect(osc.frequency);
  const amp = ac.createGain(); amp.gain.value = 0.3;
  const pulse = ac.createOscillator(); pulse.frequency.value = 3;
  const pg = ac.createGain(); pg.gain.value = 0.2;
  pulse.connect(pg).connect(amp.gain);
  const dest = ac.createMediaStreamDestination();
  osc.connect(amp).connect(dest);
  for (const o of [osc, lfo, pulse]) o.start();
  ac.resume().catch(() => {});
  stream.addTrack(dest.stream.getAudioTracks()[0]);
  const stopAll = stream.getTracks.bind(stream);
  stream.stopPattern = () => { clearInterval(timer); ac.close().catch(() => {}); stopAll().forEach((t) => t.stop()); };
  return stream;
}

// ---- live figures (the rehearsal page): up is what the far end receives, down what this page receives.
const num = (x, d) => { const s = x.toFixed(d); return C.lang === 'id' ? s.replace('.', ',') : s; };
const pct = (x) => num(x * 100, x < 0.1 ? 1 : 0) + ' %';
const first = {}, prev = {};
function figures(dir, t, v, a) {
  if (!v) return;
  const f = first[dir] = first[dir] || {t, v, a: a || {}};
  const p = prev[dir] || {t, v};
  const dt = t - p.t;
  const set = (fig, text) => { const c = $('f-' + fig + '-' + dir); if (c) c.textContent = text; };
  const fps = v.framesPerSecond !== undefined ? v.framesPerSecond
    : (dt > 0 ? ((v.framesDecoded || 0) - (p.v.framesDecoded || 0)) / dt : 0);
  set('fps', num(fps, 0));
  if (v.frameWidth) set('picture', v.frameWidth + '×' + v.frameHeight);
  if (dt > 0) set('rate', num(((v.bytesReceived || 0) - (p.v.bytesReceived || 0)) * 8 / dt / 1000, 0) + ' kbit/s');
  const span = t - f.t;
  const frozen = (v.totalFreezesDuration || 0) - (f.v.totalFreezesDuration || 0);
  if (span > 0) set('freeze', pct(Math.min(1, frozen / span)));
  if (a && a.totalSamplesReceived > (f.a.totalSamplesReceived || 0)) {
    set('concealment', pct(((a.concealedSamples || 0) - (f.a.concealedSamples || 0)) /
                           (a.totalSamplesReceived - (f.a.totalSamplesReceived || 0))));
  }
  prev[dir] = {t, v};
}

function show(o) {
  stopped = true;
  hangup();
  console.info('desanet rehearsal outcome:', JSON.stringify(o));
  status(say('status_done', {}, 'done'));
  const box = $('result');
  box.hidden = false;
  const line = (tag, text, cls) => {
    const e = document.createElement(tag);
    e.textContent = text;
    if (cls) e.className = cls;
    box.appendChild(e);
    return e;
  };
  line('h2', say('result', {}, 'Result'));
  line('p', o.headline || '', 'headline ' + (o.outcome || ''));
  if (o.reason) line('p', o.reason);
  for (const d of o.directions || []) {
    const p = line('p', '');
    const b = document.createElement('b');
    b.textContent = d.outcome_words;
    b.className = d.outcome;
    p.append(d.name + ': ', b, ' — ' + d.reason);
  }
  const again = line('a', say('again', {}, 'again'));
  again.href = location.pathname + '?lang=' + encodeURIComponent(C.lang);
}

async function watch() {
  // The outcome, once desanet has judged the call (or given up on it): up to 3 minutes after the page opened
  // plus the call; one small request every 2 s.
  const until = Date.now() + 1000 * (180 + C.seconds);
  while (Date.now() < until) {
    await new Promise((ok) => setTimeout(ok, 2000));
    try {
      const r = await fetch(url('/outcome/' + C.role));
      if (r.status === 200) return show(await r.json());
    } catch (e) { /* the path may be down for a while */ }
  }
  stopped = true;
  hangup();
  status(say('no_result', {}, 'no result'));
}

async function start(source) {
  $('choose').hidden = true;
  status(say(source === 'pattern' ? 'status_pattern' : 'status_camera', {}, 'camera'));
  const media = source === 'pattern' ? pattern() : await camera();
  report({media: source});
  $('self').srcObject = media;
  const pc = new RTCPeerConnection({iceServers: []});
  hangup = () => {
    pc.close();
    if (media.stopPattern) media.stopPattern(); else media.getTracks().forEach((t) => t.stop());
  };
  let connectedAt = null;
  pc.addEventListener('connectionstatechange', () => {
    if (pc.connectionState === 'connected' && connectedAt === null) connectedAt = Date.now();
    report({connection: pc.connectionState});
  });
  pc.addEventListener('track', (e) => { $('remote').srcObject = e.streams[0]; });
  for (const t of media.getTracks()) pc.addTrack(t, media);
  status(say('status_signalling', {}, 'signalling'));
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
  status(say('status_call', {seconds: Math.round(C.seconds)}, 'call'));
  if (C.live) $('figures').hidden = false;
  const timer = setInterval(async () => {
    if (stopped) { clearInterval(timer); return; }
    try {
      const s = await sample(pc);
      const answer = await post('/stats/' + C.role, s, C.live ? {peer: '1'} : {});
      if (C.live && !stopped) {
        figures('down', s.t, s.in_video, s.in_audio);
        if (answer.peer) figures('up', answer.peer.t, answer.peer.in_video, answer.peer.in_audio);
        const left = connectedAt === null ? C.seconds : C.seconds - (Date.now() - connectedAt) / 1000;
        status(say('status_call', {seconds: Math.max(0, Math.round(left))}, 'call'));
      }
      if (answer.stop) {
        stopped = !C.live;
        clearInterval(timer);
        hangup();
        status(say(C.live ? 'status_judging' : 'status_done', {}, 'done'));
      }
    } catch (e) { /* the path may be down for a while: keep sampling, the server judges the gap */ }
  }, 1000);
}

function fail(e) { status(say('status_error', {error: String(e)}, 'error: ' + e)); report({error: String(e)}); }

if (C.live) watch();
if (C.source === 'choose') {
  $('choose').hidden = false;
  status(say('choose_within', {seconds: Math.round(C.start_seconds)}, ''));
  const cam = $('use-camera');
  if (!window.isSecureContext || !navigator.mediaDevices) { cam.disabled = true; $('https').hidden = false; }
  cam.addEventListener('click', () => start('camera').catch(fail));
  $('use-pattern').addEventListener('click', () => start('pattern').catch(fail));
} else {
  start(C.source).catch(fail);
}
"""

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;padding:.6rem;background:#fafafa;color:#222;max-width:48rem}
h1{font-size:1.2rem;margin:.3rem 0} h2{font-size:1.05rem;margin:.8rem 0 .3rem}
button{font-size:1rem;padding:.5rem .8rem;margin:.2rem .4rem .2rem 0}
table{border-collapse:collapse;font-size:.9rem;background:#fff;margin:.4rem 0}
th,td{padding:.25rem .5rem;border-bottom:1px solid #ddd;text-align:left}
td{font-variant-numeric:tabular-nums} video{background:#000;margin:.2rem .2rem 0 0;max-width:100%}
.holds{color:#2e7d32}.degraded{color:#ef8f00}.fails{color:#c62828} .headline{font-weight:600}
small{color:#666}
"""
_FIGURES = ("fps", "picture", "rate", "freeze", "concealment")
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
# What the browser may load or run for this page: its own script (by hash), inline style, requests to desanet.
CSP = (
    f"default-src 'none'; script-src '{SCRIPT_HASH}'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; media-src 'self' blob: mediastream:; base-uri 'none'; form-action 'self'"
)


def render(cfg: PageConfig) -> bytes:
    """The page, with its configuration as JSON in a script element (escaped so no value can close it)."""
    cfg_json = json.dumps(asdict(cfg)).replace("<", "\\u003c")
    w = cfg.words
    e = html.escape
    title = e(cfg.title or f"desanet call {cfg.call_id} ({cfg.role})")
    rows = "".join(
        f"<tr><th>{e(w.get('fig_' + f, f))}</th><td id='f-{f}-up'>–</td><td id='f-{f}-down'>–</td></tr>"
        for f in _FIGURES
    )
    return (
        f"<!doctype html><html lang='{e(cfg.lang)}'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<link rel='icon' href='data:,'>"  # no /favicon.ico request over a village's link (and its 401)
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<h1>{title}</h1>" + (f"<p>{e(cfg.intro)}</p>" if cfg.intro else "") + "<div id='choose' hidden>"
        f"<p>{e(w.get('choose', ''))}</p>"
        f"<button id='use-camera'>{e(w.get('source_camera', 'camera'))}</button>"
        f"<button id='use-pattern'>{e(w.get('source_pattern', 'pattern'))}</button>"
        f"<p id='https' hidden><small>{e(w.get('camera_needs_https', ''))}</small></p></div>"
        "<p id='status'>start</p>"
        f"<table id='figures' hidden><tr><th>{e(w.get('col_figure', ''))}</th><th>{e(w.get('col_up', 'up'))}</th>"
        f"<th>{e(w.get('col_down', 'down'))}</th></tr>{rows}</table>"
        "<div id='result' hidden></div>"
        "<video id='self' autoplay muted playsinline width='160'></video>"
        "<video id='remote' autoplay playsinline width='320'></video>"
        f"<script type='application/json' id='cfg'>{cfg_json}</script>"
        f"<script>{_SCRIPT}</script></body></html>"
    ).encode()
