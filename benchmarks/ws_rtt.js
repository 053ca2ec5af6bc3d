'use strict';
// WebSocket round-trip timer of the proxy benchmark (benchmarks/proxy_bench.py).
//
//   node ws_rtt.js URL COUNT WARMUP TIMEOUT_SECONDS [HEADERS_JSON] [REPLIES]
//
// Sends one small Jupyter-like text message at a time and waits for its echo (for REPLIES
// echoes, default 1, when the server answers each message several times: the time is then
// until the last one); after WARMUP round trips, records COUNT more. Prints one JSON line: {"rtt_us": [...]} or {"error": ...}.
// Gives up after TIMEOUT_SECONDS whatever happens.

const WebSocket = require('ws');

const [url, countArg, warmupArg, timeoutArg, headersArg, repliesArg] = process.argv.slice(2);
const count = Math.max(1, Number(countArg));
const warmup = Math.max(0, Number(warmupArg));
const headers = headersArg ? JSON.parse(headersArg) : {};
const replies = Math.max(1, Number(repliesArg || 1));

const payload = JSON.stringify({
  header: { msg_id: 'bench', msg_type: 'execute_request', username: 'bench', session: 's',
            date: '2024-01-01T00:00:00Z', version: '5.3' },
  parent_header: {}, metadata: {}, channel: 'shell',
  content: { code: 'x = 1 + 1', silent: false, store_history: true },
});

function finish(result, code) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code));
}

setTimeout(() => finish({ error: `timed out after ${timeoutArg} s` }, 2),
           Number(timeoutArg) * 1000);

const ws = new WebSocket(url, { headers, perMessageDeflate: false });
const rtts = [];
let sent = 0;
let started = 0n;
let received = 0;

function send() {
  sent += 1;
  received = 0;
  started = process.hrtime.bigint();
  ws.send(payload);
}

ws.on('open', send);
ws.on('message', () => {
  received += 1;
  if (received < replies) return;
  const us = Number(process.hrtime.bigint() - started) / 1000;
  if (sent > warmup) rtts.push(us);
  if (sent < warmup + count) {
    send();
  } else {
    ws.terminate();
    finish({ rtt_us: rtts }, 0);
  }
});
ws.on('unexpected-response', (req, res) => finish({ error: `HTTP ${res.statusCode}` }, 1));
ws.on('error', (err) => finish({ error: String(err) }, 1));
ws.on('close', (code) => {
  if (rtts.length < count) finish({ error: `closed (${code}) after ${rtts.length}` }, 1);
});
