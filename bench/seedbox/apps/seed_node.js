// The seed box's Node.js app (bench/seedbox): an http.Server on each socket passed in LISTEN_FDS
// (kechi, or a systemd socket unit), stopped gracefully on SIGTERM. At start it builds SEED_MB MiB
// of data (a framework, templates, caches; half of each MiB random, half repeated text, so that
// compressed swap packs it about 2:1 as it does a real heap), then answers every request.
'use strict';
const crypto = require('crypto');
const http = require('http');
const net = require('net');

const fds = process.env.LISTEN_PID === String(process.pid) ? Number(process.env.LISTEN_FDS || 0) : 0;
if (fds < 1) {
  console.error('seed_node.js: no sockets in LISTEN_FDS (LISTEN_PID must be this process)');
  process.exit(2);
}
const data = [];
for (let i = 0; i < Number(process.env.SEED_MB || 0); i++) {
  data.push(Buffer.concat([crypto.randomBytes(1 << 19), Buffer.alloc(1 << 19, 100)]));
}

let stopping = false;
function handler(req, res) {
  const body = `seed node: worker ${process.env.KECHI_WORKER || '-'} pid ${process.pid} (${data.length} MiB)\n`;
  const headers = { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) };
  if (stopping) headers.Connection = 'close';
  res.writeHead(200, headers);
  res.end(body);
}
const servers = [];
for (let i = 0; i < fds; i++) servers.push(http.createServer(handler).listen({ fd: 3 + i }));
// on SIGTERM: later responses close their connection, no new one is accepted, exit once all ended
process.on('SIGTERM', () => {
  stopping = true;
  let open = servers.length;
  for (const s of servers) net.Server.prototype.close.call(s, () => { if (--open === 0) process.exit(0); });
});
