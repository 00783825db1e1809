// Interop client: @stomp/stompjs (as browser clients use it) against tether.
//
//   node stomp_interop.mjs basic URL
//   node stomp_interop.mjs token TOKEN URL
//   node stomp_interop.mjs drain URL [URL...]
//
// Prints one JSON object per line on stdout:
//   {"event":"subscribed","round":N,"url":...,"version":...,"instance":...,"user":...}  after the RECEIPT
//   {"event":"message","round":N,"body":...,"destination":...,"instance":...}
//   {"event":"closed","code":N}                                              socket closed
//   {"event":"error",...}                                                    STOMP ERROR
//   {"event":"done","ok":true|false,"received":[...],"closeCodes":[...]}     then exits
//
// basic: connect, subscribe to /topic/interop (waiting for the receipt), send hello-1, receive it.
// token: basic, with `Authorization: Bearer TOKEN` in the CONNECT frame's headers (stompjs
//        `connectHeaders`, as a Spring client authenticates) instead of a login.
// drain: the same, then expect the server to close the socket (a drain), reconnect (cycling
//        through the URLs given; with a single URL, e.g. tether proxy, the same one), subscribe
//        again, send hello-2, and finish once hello-2 and "from-rust" (sent by the test through
//        another path) have arrived.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

const [mode, ...rest] = process.argv.slice(2);
const token = mode === 'token' ? rest.shift() : null;
const urls = rest;
if (!['basic', 'token', 'drain'].includes(mode) || urls.length === 0) {
  console.error('usage: node stomp_interop.mjs basic|token TOKEN|drain URL [URL...]');
  process.exit(64);
}

const TOPIC = '/topic/interop';
const TIMEOUT_MS = 20000;
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const received = [];
const closeCodes = [];
let round = 0;
let next = 0;
let currentUrl = null;
let finished = false;

const payload = (n) => `hello-${n} ünïcode 😀`;

function finish(ok, extra = {}) {
  if (finished) return;
  finished = true;
  emit({ event: 'done', ok, received, closeCodes, ...extra });
  const stop = client.deactivate().catch(() => {});
  Promise.race([stop, new Promise((r) => setTimeout(r, 2000))]).then(() => process.exit(ok ? 0 : 1));
}

function complete() {
  if (mode !== 'drain') return received.includes(payload(1));
  return round >= 2 && received.includes(payload(2)) && received.includes('from-rust');
}

const client = new Client({
  webSocketFactory: () => {
    currentUrl = urls[next % urls.length];
    next += 1;
    return new WebSocket(currentUrl, ['v12.stomp', 'v11.stomp', 'v10.stomp']);
  },
  connectHeaders: token ? { Authorization: `Bearer ${token}` } : { login: 'interop' },
  reconnectDelay: 200,
  heartbeatIncoming: 1000,
  heartbeatOutgoing: 1000,
  onConnect: (frame) => {
    round += 1;
    const thisRound = round;
    const receipt = `sub-${thisRound}`;
    client.watchForReceipt(receipt, () => {
      emit({
        event: 'subscribed',
        round: thisRound,
        url: currentUrl,
        version: frame.headers.version,
        instance: frame.headers['tether-instance'],
        user: frame.headers['user-name'] ?? null,
      });
      client.publish({
        destination: TOPIC,
        body: payload(thisRound),
        headers: { 'content-type': 'text/plain; charset=utf-8' },
      });
    });
    client.subscribe(
      TOPIC,
      (msg) => {
        received.push(msg.body);
        emit({
          event: 'message',
          round: thisRound,
          body: msg.body,
          destination: msg.headers.destination,
          instance: msg.headers['tether-instance'],
        });
        if (complete()) finish(true);
      },
      { id: `s-${thisRound}`, receipt },
    );
  },
  onWebSocketClose: (evt) => {
    closeCodes.push(evt.code);
    if (!finished) emit({ event: 'closed', code: evt.code });
  },
  onStompError: (frame) => {
    emit({ event: 'error', message: frame.headers.message, body: frame.body });
    finish(false, { reason: 'stomp error' });
  },
});

setTimeout(() => finish(false, { reason: 'timeout' }), TIMEOUT_MS);
client.activate();
