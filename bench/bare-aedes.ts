/**
 * The ingest baseline: stock aedes on TCP with no storage and no hooks, listening with
 * Tributary's accept backlog so that connection storms compare brokers, not kernel
 * queues. Prints its port.
 */
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Aedes } from 'aedes';
import { LISTEN_BACKLOG } from '../ingest/mqtt-transports.js';

const aedes = await Aedes.createBroker();
const server = createServer((socket) => {
  socket.setNoDelay(true);
  aedes.handle(socket);
});
server.listen({ port: 0, host: '127.0.0.1', backlog: LISTEN_BACKLOG }, () => process.stdout.write(`PORT ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => server.close(() => aedes.close(() => process.exit(0))));
