// SockJS interop: the real sockjs-client carrying @stomp/stompjs, as a browser frontend runs
// it against a Spring `addEndpoint("/ws").withSockJS()` endpoint, forced onto one transport at
// a time, against tether's proxy in front of two `tether backend` instances.
//
//   node sockjs_transports.mjs BASE_URL TRANSPORT...     (BASE_URL like http://127.0.0.1:PORT/ws)
//
// For each transport: opens clients with SockJS server ids 0, 1, 2, ... until two of them are
// connected to different instances (the proxy keys affinity on the server id), subscribes both
// to one topic (waiting for the RECEIPTs), has each publish once, and waits until both received
// both messages. Prints one JSON line per transport, then {"event":"done","ok":...}.
import SockJS from 'sockjs-client';
import { Client } from '@stomp/stompjs';

const [base, ...transports] = process.argv.slice(2);
const STEP_MS = 15000;
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const withTimeout = (p, what) =>
  Promise.race([p, new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), STEP_MS))]);

function connect(transport, server) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const client = new Client({
        webSocketFactory: () => new SockJS(base, null, { transports: [transport], server: String(server) }),
        reconnectDelay: 0,
        heartbeatIncoming: 0,
        heartbeatOutgoing: 0,
        connectHeaders: { login: `user-${transport}-${server}` },
        onConnect: (frame) => resolve({ client, instance: frame.headers['tether-instance'], server }),
        onStompError: (frame) => reject(new Error(`STOMP ERROR ${frame.headers.message}`)),
        onWebSocketClose: (evt) => reject(new Error(`closed ${evt.code} ${evt.reason}`)),
      });
      client.activate();
    }),
    `${transport} connect`,
  );
}

async function exercise(transport) {
  const clients = [];
  for (let server = 0; server < 32 && clients.length < 2; server++) {
    const c = await connect(transport, server);
    if (clients.length === 0 || clients[0].instance !== c.instance) {
      clients.push(c);
    } else {
      await c.client.deactivate();
    }
  }
  if (clients.length < 2) throw new Error(`${transport}: every session landed on one instance`);
  const topic = `/topic/sockjs.${transport}`;
  const received = clients.map(() => []);
  const transportNames = [];
  await Promise.all(
    clients.map(
      (c, i) =>
        new Promise((resolve) => {
          const receipt = `sub-${transport}-${i}`;
          c.client.watchForReceipt(receipt, resolve);
          c.client.subscribe(topic, (m) => received[i].push(m.body), { id: 'topic', receipt });
        }),
    ),
  );
  for (const c of clients) {
    transportNames.push(c.client.webSocket?.transport ?? null);
    c.client.publish({ destination: topic, body: `${transport} from ${c.instance} ünï 😀` });
  }
  const want = clients.map((c) => `${transport} from ${c.instance} ünï 😀`).sort();
  await withTimeout(
    new Promise((resolve) => {
      const check = () =>
        received.every((r) => JSON.stringify([...r].sort()) === JSON.stringify(want)) ? resolve() : setTimeout(check, 10);
      check();
    }),
    `${transport} messages`,
  );
  await Promise.all(clients.map((c) => c.client.deactivate()));
  return { instances: clients.map((c) => c.instance), servers: clients.map((c) => c.server), received, transportNames };
}

let ok = true;
for (const transport of transports) {
  try {
    const result = await exercise(transport);
    emit({ event: 'transport', transport, ...result });
  } catch (e) {
    ok = false;
    emit({ event: 'error', transport, message: String(e && e.message) });
  }
}
emit({ event: 'done', ok });
process.exit(ok ? 0 : 1);
