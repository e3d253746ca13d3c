// Free loopback ports: bind :0, read the port the kernel chose, close. Several ports are held open together so
// one call never returns the same port twice. There is an unavoidable window between close() and the server's
// own bind; the kernel hands out ephemeral ports round-robin, so a port is not reused within it in practice.
import { createServer, type Server } from 'node:net';

export const LOOPBACK = '127.0.0.1';

function listenOnZero(host: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen({ host, port: 0, exclusive: true }, () => resolve(srv));
  });
}

function close(srv: Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

/** `count` distinct free TCP ports on `host` (default 127.0.0.1). */
export async function freePorts(count: number, host: string = LOOPBACK): Promise<number[]> {
  const servers: Server[] = [];
  try {
    for (let i = 0; i < count; i++) servers.push(await listenOnZero(host));
    return servers.map((s) => {
      const addr = s.address();
      if (addr === null || typeof addr === 'string') throw new Error('unexpected server address');
      return addr.port;
    });
  } finally {
    await Promise.all(servers.map(close));
  }
}

/** One free TCP port on `host` (default 127.0.0.1). */
export async function freePort(host: string = LOOPBACK): Promise<number> {
  const [port] = await freePorts(1, host);
  return port!;
}
