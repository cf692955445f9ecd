import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { securityMode } from '../access/mode.js';
import { loadConfig, SETTINGS } from '../core/config.js';
import { clusterNodeEnv, SHARED_NODE_ENV } from './cluster/node-env.js';
import { tempDir } from './helpers.js';
import { hasTool, ROOT, startServerProcess } from './process.js';

// There is no Docker engine on these machines: the compose file and the Dockerfile are
// checked here, never built or run.

const NODES = ['node-1', 'node-2', 'node-3'];
/** The only variables whose values differ between the compose nodes. */
const NODE_SPECIFIC = ['TRIBUTARY_ADVERTISED_HTTP_URL'];

interface Service {
  image?: string;
  build?: unknown;
  command?: string[];
  environment?: Record<string, string | number>;
  /** Short syntax (docker-compose 1.x prints `[ip:]host:container[/proto]`) or long syntax. */
  ports?: (string | { published: string | number; target: string | number })[];
  volumes?: (string | { source: string; target: string })[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test?: string[] | string; disable?: boolean };
}
interface ComposeFile {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

function run(cmd: string, args: string[], input?: string): string {
  const res = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', timeout: 30_000, input });
  if (res.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${res.status}: ${res.stderr}`);
  return res.stdout;
}

/**
 * The file as Compose reads it: `docker-compose config` resolves anchors and merge keys;
 * PyYAML, which Debian's docker-compose depends on, turns its output into JSON (no YAML
 * parser among our own dependencies).
 */
function composeConfig(): ComposeFile {
  const yaml = run('docker-compose', ['config']);
  return JSON.parse(run('python3', ['-c', 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)'], yaml)) as ComposeFile;
}

function env(service: Service): Record<string, string> {
  return Object.fromEntries(Object.entries(service.environment ?? {}).map(([k, v]) => [k, String(v)]));
}

function ports(service: Service): { host: number; container: number }[] {
  return (service.ports ?? []).map((p) => {
    if (typeof p === 'object') return { host: Number(p.published), container: Number(p.target) };
    const m = /^(?:[\d.]+:)?(\d+):(\d+)(?:\/tcp)?$/.exec(p);
    if (!m) throw new Error(`unexpected port mapping ${p}`);
    return { host: Number(m[1]), container: Number(m[2]) };
  });
}

function volumes(service: Service): { source: string; target: string }[] {
  return (service.volumes ?? []).map((v) => {
    if (typeof v === 'object') return { source: v.source, target: v.target };
    const [source = '', target = ''] = v.split(':');
    return { source, target };
  });
}

/** `name=value` lines of the broker config test/kafka/start-kafka.sh writes. */
function testBrokerProperties(): Map<string, string> {
  const script = readFileSync(join(ROOT, 'test/kafka/start-kafka.sh'), 'utf8');
  const body = /server\.properties" <<PROPS\n([\s\S]*?)\nPROPS\n/.exec(script)?.[1];
  if (body === undefined) throw new Error('start-kafka.sh writes no server.properties here-document');
  const props = new Map<string, string>();
  for (const line of body.split('\n')) {
    const m = /^([a-z][a-z0-9.]*)=(.*)$/.exec(line);
    if (m) props.set(m[1] as string, m[2] as string);
  }
  return props;
}

/** The apache/kafka image's naming: `log.dirs` → `KAFKA_LOG_DIRS`. */
function kafkaEnvName(property: string): string {
  return `KAFKA_${property.replaceAll('.', '_').toUpperCase()}`;
}

/** The instructions of the Dockerfile's last stage, continuation lines joined. */
function finalStage(): { instruction: string; args: string }[] {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const lines = text.split('\n').filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
  const stages = lines.map((l) => /^(\S+)\s+(.*)$/.exec(l.trim())).map((m) => ({ instruction: (m?.[1] ?? '').toUpperCase(), args: (m?.[2] ?? '').trim() }));
  return stages.slice(stages.map((s) => s.instruction).lastIndexOf('FROM'));
}

describe.skipIf(!hasTool('docker-compose'))('docker-compose.yml', () => {
  let compose: ComposeFile;
  beforeAll(() => {
    compose = composeConfig();
  });
  const service = (name: string): Service => {
    const s = compose.services[name];
    if (!s) throw new Error(`no service ${name}`);
    return s;
  };

  it('is a valid compose file', () => {
    const res = spawnSync('docker-compose', ['config', '--quiet'], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
    expect(res.status, res.stderr).toBe(0);
  });

  it('runs one Kafka broker and the nodes node-1..3', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['kafka', ...NODES]);
  });

  it('gives every node the same build, command and environment but its advertised URL', () => {
    const first = service('node-1');
    const firstEnv = env(first);
    for (const name of NODES) {
      const s = service(name);
      expect({ build: s.build, image: s.image, command: s.command }, name).toEqual({ build: first.build, image: first.image, command: first.command });
      const nodeEnv = env(s);
      expect(Object.keys(nodeEnv).sort(), name).toEqual(Object.keys(firstEnv).sort());
      for (const key of Object.keys(nodeEnv)) if (!NODE_SPECIFIC.includes(key)) expect(nodeEnv[key], `${name} ${key}`).toBe(firstEnv[key]);
      // Other nodes reach this one by its service name, on the port it listens on.
      expect(nodeEnv.TRIBUTARY_ADVERTISED_HTTP_URL).toBe(`http://${name}:${nodeEnv.TRIBUTARY_HTTP_PORT}`);
    }
  });

  it('starts every node in cluster mode and, bound to 0.0.0.0, in secured mode', () => {
    for (const name of NODES) {
      const config = loadConfig({ env: env(service(name)) });
      expect(config.kafkaBrokers, name).not.toBe('');
      expect(securityMode(config), name).toBe('secured');
      // Enough partitions that every node owns some.
      expect(config.streamShards, name).toBeGreaterThanOrEqual(NODES.length);
    }
  });

  it('gives each node its own named volume at its data directory', () => {
    const declared = Object.keys(compose.volumes ?? {});
    const sources = NODES.map((name) => {
      const s = service(name);
      const data = volumes(s).find((v) => v.target === env(s).TRIBUTARY_DATA_DIR);
      expect(data, `${name} mounts a volume at its data directory`).toBeDefined();
      expect(declared, name).toContain(data?.source);
      return data?.source;
    });
    const all = Object.values(compose.services).flatMap((s) => volumes(s).map((v) => v.source));
    for (const source of sources) expect(all.filter((s) => s === source), `${source} is one node's`).toHaveLength(1);
  });

  it('publishes node-N on host ports 1882+N (MQTT) and 2999+N (HTTP), no port twice', () => {
    const published = Object.values(compose.services).flatMap((s) => ports(s).map((p) => p.host));
    expect(new Set(published).size).toBe(published.length);
    NODES.forEach((name, i) => {
      const nodeEnv = env(service(name));
      expect(ports(service(name)), name).toEqual([
        { host: 1883 + i, container: Number(nodeEnv.TRIBUTARY_MQTT_PORT) },
        { host: 3000 + i, container: Number(nodeEnv.TRIBUTARY_HTTP_PORT) },
      ]);
    });
  });

  it('runs the official apache/kafka image, the version the Kafka tests use, in KRaft mode', () => {
    const kafka = service('kafka');
    const pom = readFileSync(join(ROOT, 'test/kafka/pom.xml'), 'utf8');
    const tested = /<kafka\.version>(.+)<\/kafka\.version>/.exec(pom)?.[1];
    expect(tested).toMatch(/^4\.\d+\.\d+$/);
    expect(kafka.image).toBe(`apache/kafka:${tested}`);
    const kafkaEnv = env(kafka);
    expect(kafkaEnv.KAFKA_PROCESS_ROLES?.split(',').sort()).toEqual(['broker', 'controller']);
    expect(kafkaEnv.KAFKA_CONTROLLER_QUORUM_VOTERS).toMatch(new RegExp(`^${kafkaEnv.KAFKA_NODE_ID}@`));
    expect(Object.keys(kafkaEnv).filter((k) => k.includes('ZOOKEEPER'))).toEqual([]);
    expect(kafka.healthcheck?.test).toBeDefined();
    // The nodes bootstrap from the listener the broker advertises, once it is healthy.
    const advertised = (kafkaEnv.KAFKA_ADVERTISED_LISTENERS ?? '').split(',').map((l) => l.replace(/^\w+:\/\//, ''));
    for (const name of NODES) {
      expect(service(name).depends_on?.kafka?.condition, name).toBe('service_healthy');
      for (const broker of env(service(name)).TRIBUTARY_KAFKA_BROKERS?.split(',') ?? []) expect(advertised, name).toContain(broker);
    }
  });

  it('configures the broker like the one the Kafka tests run against', () => {
    const kafkaEnv = env(service('kafka'));
    const props = testBrokerProperties();
    expect(props.size).toBeGreaterThan(10);
    for (const [property, value] of props) {
      const name = kafkaEnvName(property);
      expect(kafkaEnv, property).toHaveProperty(name);
      // Addresses and directories are the test run's own ($port, $dir); the rest must match.
      if (!value.includes('$')) expect(kafkaEnv[name], property).toBe(value);
    }
  });

  it("leaves the nodes' health check to the image", () => {
    for (const name of NODES) expect(service(name).healthcheck?.disable, name).not.toBe(true);
    expect(finalStage().some((s) => s.instruction === 'HEALTHCHECK')).toBe(true);
  });

  it("clusterNodeEnv gives test nodes the compose nodes' variables, the shared values and loopback binds", () => {
    const composeEnv = env(service('node-1'));
    const testEnv = clusterNodeEnv({ index: 1, brokers: '127.0.0.1:9092', dataDir: '/tmp/node-1', httpPort: 4000, mqttPort: 4001, topicPrefix: 'test.' });
    expect(Object.keys(testEnv).sort()).toEqual(Object.keys(composeEnv).sort());
    for (const [key, value] of Object.entries(SHARED_NODE_ENV)) expect(composeEnv[key], key).toBe(value);

    const config = loadConfig({ env: testEnv });
    expect(securityMode(config)).toBe('open');
    expect(config).toMatchObject({ kafkaBrokers: '127.0.0.1:9092', kafkaTopicPrefix: 'test.', dataDir: '/tmp/node-1', httpPort: 4000, mqttPort: 4001, advertisedHttpUrl: 'http://127.0.0.1:4000' });
    expect(() => clusterNodeEnv({ index: 2, brokers: '127.0.0.1:9092', dataDir: '/tmp/node-2', httpPort: 0, mqttPort: 0, topicPrefix: 'test.' })).toThrow(/node-2: httpPort must be a fixed port/);
  });
});

describe('Dockerfile', () => {
  it('runs as a non-root user and exposes the ports the nodes listen on', () => {
    const stage = finalStage();
    const user = stage.filter((s) => s.instruction === 'USER').at(-1)?.args;
    expect(user).toBeDefined();
    expect(['root', '0']).not.toContain(user?.split(':')[0]);
    const exposed = stage.filter((s) => s.instruction === 'EXPOSE').flatMap((s) => s.args.split(/\s+/).map(Number));
    expect(exposed.sort()).toEqual([SETTINGS.mqttPort.default, SETTINGS.httpPort.default].sort());
  });

  it('health-checks /readyz: healthy while a node runs, unhealthy once it is gone', async () => {
    const check = finalStage().find((s) => s.instruction === 'HEALTHCHECK')?.args ?? '';
    const probe = JSON.parse(check.slice(check.indexOf('CMD ') + 4)) as string[];
    expect(probe[0]).toBe('node');
    const runProbe = (port: string) =>
      spawnSync(process.execPath, probe.slice(1), { env: { PATH: process.env.PATH, TRIBUTARY_HTTP_PORT: port }, encoding: 'utf8', timeout: 20_000 }).status;

    const dir = tempDir();
    try {
      const server = await startServerProcess(['--data-dir', dir.path]);
      try {
        const port = new URL(server.httpUrl).port;
        expect(runProbe(port), server.output()).toBe(0);
        await server.signal('SIGTERM');
        expect(runProbe(port)).toBe(1);
      } finally {
        await server.signal('SIGKILL');
      }
    } finally {
      dir.cleanup();
    }
  }, 60_000);
});
