'use strict';
// The upstream of the proxy benchmark (benchmarks/proxy_bench.py): a small, fast HTTP
// server on 127.0.0.1 standing in for a JupyterLab, so the upstream is not the bottleneck.
//
//   node upstream.js PORT
//
// Endpoints, matched on the end of the path (the proxies forward /instances/<uid>/lab/...):
//   .../small          a small JSON answer (like JupyterLab's /api/kernels polling)
//   .../big?bytes=N    N bytes (at most 4 GiB) streamed with Content-Length and backpressure
//   .../headers        the request headers as JSON (checks what the proxy forwards)
//   .../ws?replies=R   WebSocket echo, each message answered R times (default 1, at most
//                      100), like the several messages a Jupyter kernel sends per request
//                      (npm `ws`, found through NODE_PATH)
// Prints "ready" on stdout once listening.

const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const SMALL = Buffer.from(JSON.stringify({
  id: '2f0c6a8e-8a1f-4a7b-9d55-0b8b2a1c3d4e', name: 'python3', last_activity:
  '2024-01-01T00:00:00.000000Z', execution_state: 'idle', connections: 1,
}));
const CHUNK = Buffer.alloc(256 * 1024, 0x61);
const MAX_BYTES = 4 * 1024 ** 3;

function stream(req, res, total) {
  res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': total });
  let left = total;
  res.on('close', () => { left = 0; });
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      if (!res.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = url.pathname;
  if (path.endsWith('/small')) {
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': SMALL.length });
    res.end(SMALL);
  } else if (path.endsWith('/big')) {
    const bytes = Math.max(0, Math.min(Number(url.searchParams.get('bytes') || 0), MAX_BYTES));
    stream(req, res, Number.isFinite(bytes) ? Math.floor(bytes) : 0);
  } else if (path.endsWith('/headers')) {
    const body = Buffer.from(JSON.stringify(req.headers));
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
    res.end(body);
  } else {
    res.writeHead(404, { 'Content-Length': 0 });
    res.end();
  }
});
server.keepAliveTimeout = 60000;

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (!url.pathname.endsWith('/ws')) {
    socket.destroy();
    return;
  }
  const replies = Math.max(1, Math.min(Number(url.searchParams.get('replies') || 1) || 1, 100));
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (data, isBinary) => {
      for (let i = 0; i < replies; i += 1) ws.send(data, { binary: isBinary });
    });
  });
});

server.listen(port, '127.0.0.1', () => process.stdout.write('ready\n'));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
