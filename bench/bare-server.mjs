// The machine's own limit for serving a blob from Node over loopback, measured in the same run as the servers:
// a bare node:http server with nothing else to do.
//   GET /buffer  the file's bytes from memory, res.end(buffer)            (what Node can do at best)
//   GET /file    fs.createReadStream(file, { highWaterMark: 1 MiB }) piped to the response
//
//   node bench/bare-server.mjs <port> <file>
import { createReadStream, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import { pipeline } from 'node:stream/promises';

const [port, file] = [Number(process.argv[2]), process.argv[3]];
const buffer = readFileSync(file);
const size = statSync(file).size;
const MiB = 1024 * 1024;

const server = http.createServer({ keepAlive: true }, (req, res) => {
  if (req.url === '/buffer') {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': buffer.length });
    res.end(buffer);
  } else if (req.url === '/file') {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': size });
    pipeline(createReadStream(file, { highWaterMark: MiB }), res).catch(() => res.destroy());
  } else {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 3 });
    res.end('ok\n');
  }
});
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
