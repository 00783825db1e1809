// tether demo page: a tiny STOMP 1.2 client over the browser WebSocket (no libraries).
// It joins /topic/room.{name}, sends JSON chat messages, shows which instance each message was
// published on, and reconnects with exponential backoff when its instance drains. It misses
// nothing across a reconnect: it remembers the `x-stream-id` of the last message of its room and
// subscribes again with `x-resume-from` (the backends keep history), so what was published
// meanwhile arrives first, once.
//
// Who you are: with `?user=NAME` the page signs in before every (re)connect with
// `/login?user=NAME` (served by `tether demo`), which sets a short-lived token in an HttpOnly
// cookie; the proxy verifies it on the WebSocket upgrade, pins you by the verified name and
// tells the backend. Without a name you are anonymous (a random display name; the proxy pins
// you by its sticky cookie), and any demo token left in the cookie is dropped first.
'use strict';

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'), instance: $('instance'), whoami: $('whoami'), user: $('user'),
  room: $('room'), join: $('join'), messages: $('messages'), composer: $('composer'),
  text: $('text'), send: $('send'), log: $('log'),
};

function log(line) {
  const t = new Date().toLocaleTimeString();
  ui.log.textContent = `${t} ${line}\n` + ui.log.textContent.slice(0, 4000);
}

function setStatus(kind, text) {
  ui.status.className = `status ${kind}`;
  ui.status.textContent = text;
}

// ---- STOMP framing (1.2: header escaping, content-length, EOL heart-beats) ----------------
const enc = new TextEncoder();
const dec = new TextDecoder();

function escapeHeader(s) {
  return s.replace(/\\/g, '\\\\').replace(/\r/g, '\\r').replace(/\n/g, '\\n').replace(/:/g, '\\c');
}

function unescapeHeader(s) {
  return s.replace(/\\(.)/g, (_, c) => ({ r: '\r', n: '\n', c: ':', '\\': '\\' }[c] ?? c));
}

function frame(command, headers, body = '') {
  const escape = command !== 'CONNECT';
  let out = command + '\n';
  const h = { ...headers };
  if (body) h['content-length'] = String(enc.encode(body).length);
  for (const [k, v] of Object.entries(h)) {
    out += (escape ? escapeHeader(k) : k) + ':' + (escape ? escapeHeader(String(v)) : v) + '\n';
  }
  return out + '\n' + body + '\0';
}

// Incremental parser: frames may span WebSocket messages, one message may hold several.
class Parser {
  constructor(onFrame) { this.buf = new Uint8Array(0); this.onFrame = onFrame; }
  push(bytes) {
    const b = new Uint8Array(this.buf.length + bytes.length);
    b.set(this.buf); b.set(bytes, this.buf.length); this.buf = b;
    for (;;) {
      while (this.buf.length && (this.buf[0] === 10 || this.buf[0] === 13)) this.buf = this.buf.subarray(1);
      const headEnd = this.headEnd();
      if (headEnd === -1) return;
      const head = dec.decode(this.buf.subarray(0, headEnd.at)).replace(/\r\n/g, '\n').split('\n');
      const command = head.shift();
      const headers = {};
      for (const line of head) {
        const i = line.indexOf(':');
        if (i < 0) continue;
        const k = unescapeHeader(line.slice(0, i));
        if (!(k in headers)) headers[k] = unescapeHeader(line.slice(i + 1));
      }
      const start = headEnd.body;
      let end;
      if (headers['content-length'] !== undefined) {
        end = start + Number(headers['content-length']);
        if (this.buf.length <= end) return;
      } else {
        end = this.buf.indexOf(0, start);
        if (end < 0) return;
      }
      const body = dec.decode(this.buf.subarray(start, end));
      this.buf = this.buf.subarray(end + 1);
      this.onFrame({ command, headers, body });
    }
  }
  headEnd() {
    // End of headers: the first empty line, with LF or CRLF line endings.
    for (let i = 0; i < this.buf.length; i++) {
      if (this.buf[i] !== 10) continue;
      if (this.buf[i + 1] === 10) return { at: i, body: i + 2 };
      if (this.buf[i + 1] === 13 && this.buf[i + 2] === 10) return { at: i, body: i + 3 };
    }
    return -1;
  }
}

// ---- connection with reconnect ---------------------------------------------------------------
const HEARTBEAT_MS = 10000;
let ws = null;
let backoffMs = 500;
let room = null;
let joinedRoom = null;
let receipts = 0;
let beatTimer = null;
let watchdog = null;
let lastSeen = 0;
let connected = false;

function wsUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/ws`;
}

// Whether the name in the user field is one to sign in as (given in the URL or typed), rather
// than a random display name.
let signedIn = false;

// Gets (or drops) the demo token cookie the WebSocket upgrade will carry. Served by
// `tether demo` only: elsewhere /login is 404 and the page connects as it is.
async function identify() {
  const user = ui.user.value.trim();
  const path = signedIn && user ? `/login?user=${encodeURIComponent(user)}` : '/logout';
  try {
    const r = await fetch(path, { cache: 'no-store', credentials: 'same-origin' });
    if (!r.ok && r.status !== 404) log(`${path.split('?')[0]} answered ${r.status}`);
  } catch (e) {
    log(`${path.split('?')[0]} failed: ${e}`);
  }
}

function send(text) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(text);
}

async function connect() {
  clearTimers();
  setStatus('wait', 'connecting');
  await identify();
  const sock = new WebSocket(wsUrl(), ['v12.stomp', 'v11.stomp', 'v10.stomp']);
  sock.binaryType = 'arraybuffer';
  ws = sock;
  const parser = new Parser(onFrame);
  sock.onopen = () => {
    const headers = { 'accept-version': '1.2,1.1', host: location.hostname, 'heart-beat': `${HEARTBEAT_MS},${HEARTBEAT_MS}` };
    // For `tether backend --accept-login` without the demo: a login names nobody otherwise.
    const user = ui.user.value.trim();
    if (signedIn && user) headers.login = user;
    sock.send(frame('CONNECT', headers));
  };
  sock.onmessage = (ev) => {
    lastSeen = Date.now();
    parser.push(typeof ev.data === 'string' ? enc.encode(ev.data) : new Uint8Array(ev.data));
  };
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    connected = false;
    subscriptionId = null;
    clearTimers();
    ui.instance.textContent = '?';
    setComposer(false);
    joinedRoom = null;
    const delay = Math.round(backoffMs * (0.8 + Math.random() * 0.4));
    const why = ev.code === 1001 ? 'instance draining (1001)' : `closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`;
    setStatus('down', `reconnecting in ${(delay / 1000).toFixed(1)}s`);
    log(`${why}; reconnecting in ${delay} ms`);
    backoffMs = Math.min(backoffMs * 2, 10000);
    setTimeout(connect, delay);
  };
}

function clearTimers() {
  clearInterval(beatTimer); clearInterval(watchdog);
  beatTimer = watchdog = null;
}

function onFrame(f) {
  switch (f.command) {
    case 'CONNECTED': {
      backoffMs = 500;
      connected = true;
      subscriptionId = null;
      const inst = f.headers['tether-instance'] || '?';
      ui.instance.textContent = inst;
      setStatus('up', `connected (STOMP ${f.headers.version})`);
      log(`connected to ${inst} as ${f.headers['user-name'] || 'anonymous'}`);
      const [sx, sy] = (f.headers['heart-beat'] || '0,0').split(',').map(Number);
      const sendEvery = sy > 0 ? Math.max(HEARTBEAT_MS, sy) : 0;
      const expectEvery = sx > 0 ? Math.max(HEARTBEAT_MS, sx) : 0;
      if (sendEvery) beatTimer = setInterval(() => send('\n'), sendEvery);
      if (expectEvery) {
        lastSeen = Date.now();
        watchdog = setInterval(() => {
          if (Date.now() - lastSeen > 3 * expectEvery) { log('server silent: closing'); ws.close(); }
        }, expectEvery);
      }
      if (room) subscribe(room);
      break;
    }
    case 'RECEIPT':
      if (f.headers['receipt-id'] === `join-${receipts}`) {
        joinedRoom = room;
        setComposer(true);
        log(`joined room ${room}`);
      }
      break;
    case 'MESSAGE':
      // Only the current room's subscription: a late message of a room just left is dropped.
      if (f.headers.subscription !== subscriptionId) break;
      if (f.headers['x-resume-gap'] === 'true') log('some messages were older than the history');
      if (f.headers['x-stream-id']) lastStreamId = f.headers['x-stream-id'];
      showMessage(f);
      break;
    case 'ERROR':
      log(`ERROR ${f.headers.message || ''} ${f.body}`);
      break;
  }
}

// The subscription this connection has (pending or confirmed), so a room is never subscribed
// twice and leaving it always unsubscribes; a fresh id per join keeps rooms apart.
let subscriptionId = null;
let joins = 0;
// The position reached in the current room's stream: a resubscription after a reconnect
// resumes from it.
let lastStreamId = null;

function subscribe(name) {
  receipts += 1;
  joins += 1;
  subscriptionId = `room-${joins}`;
  const headers = { id: subscriptionId, destination: `/topic/room.${name}`, receipt: `join-${receipts}` };
  if (lastStreamId) {
    headers['x-resume-from'] = lastStreamId;
    log(`resuming room ${name} after ${lastStreamId}`);
  }
  send(frame('SUBSCRIBE', headers));
}

function join() {
  const name = ui.room.value.trim();
  if (!name || (name === room && subscriptionId)) return;
  if (subscriptionId) send(frame('UNSUBSCRIBE', { id: subscriptionId }));
  subscriptionId = null;
  joinedRoom = null;
  setComposer(false);
  ui.messages.textContent = '';
  lastStreamId = null;
  room = name;
  if (connected) subscribe(name);
}

function showMessage(f) {
  // Any body (empty, `null`, a number, not JSON at all) renders as text.
  let data = null;
  try { data = JSON.parse(f.body); } catch { /* not JSON */ }
  if (data === null || typeof data !== 'object') data = { text: f.body };
  const row = document.createElement('div');
  row.className = 'msg';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = (f.headers['tether-user'] || data.user || 'anonymous') + ': ';
  const text = document.createElement('span');
  text.textContent = String(data.text ?? '');
  const inst = document.createElement('span');
  inst.className = 'inst';
  inst.textContent = `via ${f.headers['tether-instance'] || '?'}`;
  row.append(who, text, inst);
  ui.messages.append(row);
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function setComposer(on) {
  ui.text.disabled = !on;
  ui.send.disabled = !on;
}

ui.join.onclick = join;
ui.composer.onsubmit = (ev) => {
  ev.preventDefault();
  const text = ui.text.value.trim();
  if (!text || !joinedRoom) return;
  const body = JSON.stringify({ user: ui.user.value.trim() || 'anonymous', text });
  send(frame('SEND', { destination: `/topic/room.${joinedRoom}`, 'content-type': 'application/json' }, body));
  ui.text.value = '';
};
ui.user.onchange = () => {
  signedIn = ui.user.value.trim() !== '';
  if (ws) ws.close();
};

// `?user=NAME` in the page's URL signs in as NAME; otherwise the page is anonymous, with a
// random display name (64 random bits, so two visitors never look alike by chance).
function defaultUser() {
  const given = new URLSearchParams(location.search).get('user');
  if (given && given.trim()) {
    signedIn = true;
    return given.trim();
  }
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return 'user-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

ui.user.value = defaultUser();
fetch('/whoami').then((r) => r.json()).then((j) => { ui.whoami.textContent = j.instance; }).catch(() => {});
connect();
