// A trivial Node.js server for kechi's compatibility row (docs/APP-SERVERS.md, "Node.js"), as a
// Node user writes one for systemd socket activation: an http.Server on each socket
// passed in LISTEN_FDS (fds 3, 4, ...; LISTEN_PID must be this process), stopped gracefully on
// SIGTERM. Answers every request with 200, the worker that served it and $KT_GENERATION.
'use strict';
const http = require('http');
const net = require('net');

const fds = process.env.LISTEN_PID === String(process.pid) ? Number(process.env.LISTEN_FDS || 0) : 0;
if (fds < 1) {
  console.error('hello_node.js: no sockets in LISTEN_FDS (LISTEN_PID must be this process)');
  process.exit(2);
}

// On SIGTERM: every later response says "Connection: close" (the client opens a new connection
// for its next request, which another worker takes), and the server stops accepting with net's
// close, not http's: http.Server.close() of Node 19 and later also destroys at once each kept-alive
// connection that is idle between two requests, while the client's next request may already be on
// the wire (the kernel answers it with RST). The process exits once every connection has ended.
// With --plain, the usual server.close() and no header (the loss shown in docs/APP-SERVERS.md).
const plain = process.argv.includes('--plain');
const closeHeader = !plain;
let stopping = false;
function handler(req, res) {
  const body = `hello from worker ${process.env.KECHI_WORKER || '?'} pid ${process.pid} generation ${process.env.KT_GENERATION || '?'}\n`;
  const headers = { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) };
  if (stopping && closeHeader) headers.Connection = 'close';
  res.writeHead(200, headers);
  res.end(body);
}
// an http.Server listens once: one per inherited socket, sharing the handler
const servers = [];
for (let i = 0; i < fds; i++) servers.push(http.createServer(handler).listen({ fd: 3 + i }));

process.on('SIGTERM', () => {
  stopping = true;
  let open = servers.length;
  const done = () => { if (--open === 0) process.exit(0); };
  for (const s of servers) {
    if (plain) s.close(done);
    else net.Server.prototype.close.call(s, done);
  }
});
