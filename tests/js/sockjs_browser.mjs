// SockJS transports that need a browser DOM (htmlfile), in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core): the real sockjs-client and @stomp/stompjs bundles
// run in a page of the proxy's origin, two clients on different instances, each publishing once.
//
//   node sockjs_browser.mjs ORIGIN TRANSPORT...      (ORIGIN like http://127.0.0.1:PORT)
//
// Prints {"event":"transport",...} per transport and {"event":"done","ok":...}.
import { readFileSync } from 'node:fs';
import { launch } from './chromium.mjs';

const [origin, ...transports] = process.argv.slice(2);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
let ok = true;
let browser;
try {
  browser = await launch();
  const { page } = browser;
  // A blank page of the proxy's origin (htmlfile is same-origin only), served by the test.
  await page.route(`${origin}/sockjs-test`, (route) =>
    route.fulfill({ status: 200, contentType: 'text/html', body: '<!doctype html><html><body></body></html>' }));
  await page.goto(`${origin}/sockjs-test`);
  await page.addScriptTag({ content: readFileSync('node_modules/sockjs-client/dist/sockjs.min.js', 'utf8') });
  await page.addScriptTag({ content: readFileSync('node_modules/@stomp/stompjs/bundles/stomp.umd.min.js', 'utf8') });
  for (const transport of transports) {
    try {
      const result = await page.evaluate(async ({ base, transport }) => {
        const connect = (server) => new Promise((resolve, reject) => {
          const client = new StompJs.Client({
            webSocketFactory: () => new SockJS(base, null, { transports: [transport], server: String(server) }),
            reconnectDelay: 0, heartbeatIncoming: 0, heartbeatOutgoing: 0,
            onConnect: (f) => resolve({ client, instance: f.headers['tether-instance'] }),
            onStompError: (f) => reject(new Error('STOMP ERROR ' + f.headers.message)),
            onWebSocketClose: (e) => reject(new Error('closed ' + e.code)),
          });
          client.activate();
        });
        const clients = [];
        for (let server = 0; server < 32 && clients.length < 2; server++) {
          const c = await connect(server);
          if (clients.length === 0 || clients[0].instance !== c.instance) clients.push(c);
          else await c.client.deactivate();
        }
        const topic = '/topic/browser.' + transport;
        const received = clients.map(() => []);
        await Promise.all(clients.map((c, i) => new Promise((resolve) => {
          c.client.watchForReceipt('r' + i, resolve);
          c.client.subscribe(topic, (m) => received[i].push(m.body), { id: 't', receipt: 'r' + i });
        })));
        const used = clients.map((c) => c.client.webSocket.transport);
        for (const c of clients) c.client.publish({ destination: topic, body: transport + ' from ' + c.instance });
        await new Promise((resolve) => { const t = () => received.every((r) => r.length === 2) ? resolve() : setTimeout(t, 10); t(); });
        await Promise.all(clients.map((c) => c.client.deactivate()));
        return { instances: clients.map((c) => c.instance), received: received.map((r) => r.sort()), used };
      }, { base: `${origin}/ws`, transport });
      emit({ event: 'transport', transport, ...result });
    } catch (e) {
      ok = false;
      emit({ event: 'error', transport, message: String(e && e.message) });
    }
  }
} catch (e) {
  ok = false;
  emit({ event: 'error', message: String(e && e.message) });
} finally {
  if (browser) await browser.close();
}
emit({ event: 'done', ok });
process.exit(ok ? 0 : 1);
