/**
 * The environment of one cluster node, as docker-compose.yml gives it to node-1..3, but
 * for a node process on this machine: loopback binds (so open mode), the given ports,
 * data directory, brokers and topic prefix. test/compose.test.ts checks that the names
 * are exactly the compose nodes' and that the shared values are the compose file's.
 */
import { join } from 'node:path';
import { TributaryError } from '../../core/errors.js';
import { ROOT } from '../process.js';

/** Values every compose node has, kept as they are for nodes started by tests. */
export const SHARED_NODE_ENV = {
  TRIBUTARY_STREAM_SHARDS: '12',
  TRIBUTARY_KAFKA_REPLICATION_FACTOR: '1',
  TRIBUTARY_KAFKA_SESSION_TIMEOUT: '10s',
} as const;

export interface ClusterNode {
  /** 1-based, as node-<index> in docker-compose.yml. */
  index: number;
  /** Comma-separated host:port, as TRIBUTARY_KAFKA_BROKERS. */
  brokers: string;
  dataDir: string;
  /** A fixed port: other nodes forward queries to the URL built from it. */
  httpPort: number;
  mqttPort: number;
  /** A prefix of this test's own (`uniqueTopic`), so runs never share topics or groups. */
  topicPrefix: string;
}

export function clusterNodeEnv(node: ClusterNode): Record<string, string> {
  if (!Number.isInteger(node.httpPort) || node.httpPort < 1 || node.httpPort > 65_535) {
    throw new TributaryError('InvalidParameter', `node-${node.index}: httpPort must be a fixed port (1-65535), since it is the advertised URL's; got ${node.httpPort}`, { field: 'httpPort' });
  }
  return {
    ...SHARED_NODE_ENV,
    TRIBUTARY_DATA_DIR: node.dataDir,
    TRIBUTARY_MQTT_HOST: '127.0.0.1',
    TRIBUTARY_MQTT_PORT: String(node.mqttPort),
    TRIBUTARY_HTTP_HOST: '127.0.0.1',
    TRIBUTARY_HTTP_PORT: String(node.httpPort),
    // The folder the image copies to /app/functions/examples.
    TRIBUTARY_FUNCTIONS_DIR: join(ROOT, 'functions', 'examples'),
    TRIBUTARY_KAFKA_BROKERS: node.brokers,
    TRIBUTARY_KAFKA_TOPIC_PREFIX: node.topicPrefix,
    TRIBUTARY_ADVERTISED_HTTP_URL: `http://127.0.0.1:${node.httpPort}`,
  };
}
