// A trivial Node.js server for kechi's compatibility row (docs/APP-SERVERS.md, "Node.js"), as a
// Node user writes one for systemd socket activation: one http.Server listening on every socket
// passed in LISTEN_FDS (fds 3, 4, ...; LISTEN_PID must be this process), stopped gracefully on
// SIGTERM. Answers every request with 200, the worker that served it and $KT_GENERATION.
'use strict';
const http = require('http');

const fds = process.env.LISTEN_PID === String(process.pid) ? Number(process.env.LISTEN_FDS || 0) : 0;
if (fds < 1) {
  console.error('hello_node.js: no sockets in LISTEN_FDS (LISTEN_PID must be this process)');
  process.exit(2);
}

let stopping = false;
const server = http.createServer((req, res) => {
  const body = `hello from worker ${process.env.KECHI_WORKER || '?'} pid ${process.pid} generation ${process.env.KT_GENERATION || '?'}\n`;
  const headers = { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) };
  if (stopping) headers.Connection = 'close';
  res.writeHead(200, headers);
  res.end(body);
});
for (let i = 0; i < fds; i++) server.listen({ fd: 3 + i });

process.on('SIGTERM', () => {
  stopping = true;
  server.close(() => process.exit(0));
});
