import { readFileSync } from 'node:fs';
import { parseDuration } from './time.js';

/**
 * The settings table: each setting's key, flag, environment variable, default and
 * meaning. Config resolves defaults → config file → environment → flags; every value
 * is validated, and a bad one stops start-up with a message naming the setting.
 * `docs/configuration.md` is checked against this table by a test.
 */
type Kind =
  | { type: 'string' }
  /** A string matching `pattern`; `expected` says what in the error. */
  | { type: 'pattern'; pattern: RegExp; expected: string }
  | { type: 'path' }
  | { type: 'port' }
  | { type: 'int'; min: number; max: number }
  /** `allowZero`: `0` is accepted too and means "off". */
  | { type: 'duration'; allowZero?: boolean }
  | { type: 'bool' }
  | { type: 'enum'; values: readonly string[] };

export interface SettingDef<T> {
  kind: Kind;
  default: T;
  env: string;
  flag: string;
  description: string;
}

function setting<T>(kind: Kind, def: T, env: string, flag: string, description: string): SettingDef<T> {
  return { kind, default: def, env, flag, description };
}

export const SETTINGS = {
  dataDir: setting<string>({ type: 'path' }, './data', 'TRIBUTARY_DATA_DIR', '--data-dir', 'Directory holding the LevelDB database and everything else Tributary persists.'),
  mqttHost: setting<string>({ type: 'string' }, '127.0.0.1', 'TRIBUTARY_MQTT_HOST', '--mqtt-host', 'Address the MQTT (TCP) listener binds.'),
  mqttPort: setting<number>({ type: 'port' }, 1883, 'TRIBUTARY_MQTT_PORT', '--mqtt-port', 'Port of the MQTT (TCP) listener; 0 picks a free port.'),
  httpHost: setting<string>({ type: 'string' }, '127.0.0.1', 'TRIBUTARY_HTTP_HOST', '--http-host', 'Address the HTTP API binds.'),
  httpPort: setting<number>({ type: 'port' }, 3000, 'TRIBUTARY_HTTP_PORT', '--http-port', 'Port of the HTTP API; 0 picks a free port.'),
  logLevel: setting<string>({ type: 'enum', values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] }, 'info', 'TRIBUTARY_LOG_LEVEL', '--log-level', 'Minimum level written to the log (pino levels).'),
  functionsDir: setting<string>({ type: 'path' }, '', 'TRIBUTARY_FUNCTIONS_DIR', '--functions-dir', 'Directory of handler modules (*.js, *.mjs, *.cjs); each file is deployed as a function named after it and attached to the change stream. Empty: none.'),
  partitionWindow: setting<number>({ type: 'duration' }, 86_400_000, 'TRIBUTARY_PARTITION_WINDOW', '--partition-window', 'Width of a time partition. Fixed when the data directory is created.'),
  retention: setting<number>(
    { type: 'duration', allowZero: true },
    0,
    'TRIBUTARY_RETENTION',
    '--retention',
    'How long readings are kept, e.g. 30d; 0 keeps them forever. Enforced a whole time partition at a time: a partition is dropped once it is wholly older than now minus the retention (checked every minute and at start), so a reading lives between the retention and the retention plus one partition window. Writes with a ts older than the retention are rejected (ValidationError).',
  ),
  retentionRemoveRecords: setting<boolean>(
    { type: 'bool' },
    false,
    'TRIBUTARY_RETENTION_REMOVE_RECORDS',
    '--retention-remove-records',
    "Put a REMOVE record on the change stream for every reading retention drops, marked like DynamoDB TTL deletions (userIdentity type Service, principal dynamodb.amazonaws.com). Off by default: a drop is then silent on the stream, because dropping a partition of a million readings would otherwise put a million records on it.",
  ),
  streamShards: setting<number>({ type: 'int', min: 1, max: 1024 }, 4, 'TRIBUTARY_STREAM_SHARDS', '--stream-shards', 'Number of change-stream shards; a device always maps to one shard. Fixed when the data directory is created.'),
  streamRetention: setting<number>(
    { type: 'duration' },
    86_400_000,
    'TRIBUTARY_STREAM_RETENTION',
    '--stream-retention',
    "How long change-stream records are kept, as DynamoDB Streams' 24 hours. Older records are trimmed in the background (every minute and at start); each shard always keeps its last record.",
  ),
  maxPayloadBytes: setting<number>({ type: 'int', min: 64, max: 16 * 1024 * 1024 }, 128 * 1024, 'TRIBUTARY_MAX_PAYLOAD_BYTES', '--max-payload-bytes', 'Largest telemetry payload accepted over MQTT or HTTP, in bytes.'),
  maxKeysPerReading: setting<number>({ type: 'int', min: 1, max: 10_000 }, 256, 'TRIBUTARY_MAX_KEYS_PER_READING', '--max-keys-per-reading', 'Most leaf values in one reading; a reading with more is rejected (too_many_keys).'),
  maxClockSkew: setting<number>(
    { type: 'duration' },
    3_600_000,
    'TRIBUTARY_MAX_CLOCK_SKEW',
    '--max-clock-skew',
    "How far in the future (by the server's clock) a reading's ts may lie; a later one is rejected (timestamp_in_future), since it would stay the device's latest reading until that time.",
  ),
  devicePublishRate: setting<number>(
    { type: 'int', min: 0, max: 1_000_000 },
    100,
    'TRIBUTARY_DEVICE_PUBLISH_RATE',
    '--device-publish-rate',
    "Telemetry publishes per second one device may send over MQTT (AWS IoT's per-client limit is 100), with a burst of one second's worth. Faster publishes are not dropped: their PUBACKs are delayed, which stops the broker reading that connection until the device is back under its rate. 0: no limit.",
  ),
  rejectsRetention: setting<number>({ type: 'duration' }, 7 * 86_400_000, 'TRIBUTARY_REJECTS_RETENTION', '--rejects-retention', 'How long rejected payloads are kept in the rejects log (GET /v1/rejects); trimmed every minute.'),
  rejectsMaxEntries: setting<number>(
    { type: 'int', min: 100, max: 10_000_000 },
    50_000,
    'TRIBUTARY_REJECTS_MAX_ENTRIES',
    '--rejects-max-entries',
    'Most entries the rejects log keeps; the oldest go first. Each keeps at most 2 KiB of the raw payload, so the log stays under about this many times 2.5 KiB on disk however much garbage arrives.',
  ),
  storeWriteBufferBytes: setting<number>(
    { type: 'int', min: 1024 * 1024, max: 1024 * 1024 * 1024 },
    64 * 1024 * 1024,
    'TRIBUTARY_STORE_WRITE_BUFFER_BYTES',
    '--store-write-buffer-bytes',
    "LevelDB's write buffer: writes gather in memory up to this size before becoming a sorted table file. Larger means less compaction work per reading; it costs up to twice this in memory and up to this much log to replay when starting after a crash.",
  ),
  commitMaxBatch: setting<number>({ type: 'int', min: 1, max: 100_000 }, 2000, 'TRIBUTARY_COMMIT_MAX_BATCH', '--commit-max-batch', 'Most readings in one group commit (one synced LevelDB batch).'),
  commitMaxDelayMs: setting<number>({ type: 'int', min: 0, max: 1000 }, 0, 'TRIBUTARY_COMMIT_MAX_DELAY_MS', '--commit-max-delay-ms', 'Extra time a group commit waits to gather writes when idle. 0: commit at once when idle, batch while a commit is in flight.'),
  secure: setting<boolean>(
    { type: 'bool' },
    false,
    'TRIBUTARY_SECURE',
    '--secure',
    'Secured mode even on loopback: devices need credentials and the HTTP API an API key. Binding MQTT or HTTP to a non-loopback address always means secured mode.',
  ),
  tlsCert: setting<string>({ type: 'path' }, '', 'TRIBUTARY_TLS_CERT', '--tls-cert', 'PEM certificate (chain). With --tls-key, MQTT (TCP and WebSocket) and the HTTP API are served over TLS. Empty: plain TCP.'),
  tlsKey: setting<string>({ type: 'path' }, '', 'TRIBUTARY_TLS_KEY', '--tls-key', 'PEM private key that goes with --tls-cert.'),
  mqttMaxConnections: setting<number>({ type: 'int', min: 1, max: 1_000_000 }, 10_000, 'TRIBUTARY_MQTT_MAX_CONNECTIONS', '--mqtt-max-connections', 'Open MQTT connections (TCP, TLS and WebSocket together). A CONNECT beyond the limit is answered with CONNACK 3 (server unavailable) and closed.'),
  mqttMaxInflight: setting<number>({ type: 'int', min: 1, max: 65_535 }, 100, 'TRIBUTARY_MQTT_MAX_INFLIGHT', '--mqtt-max-inflight', "QoS 1 PUBLISHes of one client processed at once (AWS IoT's 100 unacknowledged inbound messages). Further ones wait unread until PUBACKs go out, so TCP slows the client down. Also sizes what the redelivery guard remembers of each client: its last 2 × this (at least 256) QoS 1 publishes."),
  mqttMaxSubscriptions: setting<number>({ type: 'int', min: 1, max: 100_000 }, 50, 'TRIBUTARY_MQTT_MAX_SUBSCRIPTIONS', '--mqtt-max-subscriptions', "Subscriptions one MQTT client may hold (AWS IoT's 50). A topic filter beyond it is refused in the SUBACK (return code 0x80); the client stays connected."),
  mqttDrainTimeoutMs: setting<number>({ type: 'int', min: 0, max: 3_600_000 }, 10_000, 'TRIBUTARY_MQTT_DRAIN_TIMEOUT_MS', '--mqtt-drain-timeout-ms', "A subscriber whose connection stays unwritable (it stopped reading) this long is disconnected. Until then deliveries to it hold a slot of the broker's fan-out, so a stuck subscriber delays everyone's messages. 0: wait forever."),
  corsOrigins: setting<string>(
    { type: 'string' },
    '',
    'TRIBUTARY_CORS_ORIGINS',
    '--cors-origins',
    'Comma-separated origins (e.g. https://dash.example.com) whose browser pages may call the HTTP API (CORS), or * for any. Empty: CORS off, browsers keep other origins out.',
  ),
  apiRateLimit: setting<number>(
    { type: 'int', min: 0, max: 1_000_000 },
    0,
    'TRIBUTARY_API_RATE_LIMIT',
    '--api-rate-limit',
    'HTTP requests per second one API key may make (per client address in open mode); more answer 429 Throttled with Retry-After. Probes and docs are exempt. 0: no limit.',
  ),
  httpRequestTimeoutMs: setting<number>(
    { type: 'int', min: 100, max: 3_600_000 },
    30_000,
    'TRIBUTARY_HTTP_REQUEST_TIMEOUT_MS',
    '--http-request-timeout-ms',
    'Longest an HTTP client may take to send a whole request, headers and body (the headers alone get at most 10 s of it). A slower one is answered 408 RequestTimeout and disconnected, so dripped requests cannot hold connections open. Responses are not limited (long polls, the SSE tail, invocations).',
  ),
  functionTimeoutMs: setting<number>({ type: 'int', min: 1, max: 900_000 }, 3000, 'TRIBUTARY_FUNCTION_TIMEOUT_MS', '--function-timeout-ms', 'Default handler timeout for functions that do not set their own.'),
  functionMemoryMb: setting<number>({ type: 'int', min: 16, max: 10_240 }, 128, 'TRIBUTARY_FUNCTION_MEMORY_MB', '--function-memory-mb', 'Default memory cap of a function process (JS heap and RSS watchdog).'),
  functionLogRetention: setting<number>(
    { type: 'duration' },
    604_800_000,
    'TRIBUTARY_FUNCTION_LOG_RETENTION',
    '--function-log-retention',
    'How long captured function logs (GET /v1/functions/{name}/logs) are kept; older lines are deleted in the background every minute.',
  ),
  functionLogMaxBytes: setting<number>(
    { type: 'int', min: 65_536, max: 1_073_741_824 },
    16_777_216,
    'TRIBUTARY_FUNCTION_LOG_MAX_BYTES',
    '--function-log-max-bytes',
    "Stored log bytes per function name; past it the function's oldest lines are deleted (down to 90%) as new ones are written.",
  ),
  kafkaBrokers: setting<string>(
    { type: 'string' },
    '',
    'TRIBUTARY_KAFKA_BROKERS',
    '--kafka-brokers',
    'Comma-separated Kafka bootstrap addresses (host:port). Set: cluster mode (ADR 0002) — readings go through Kafka topics and every node with the same brokers and topic prefix is one system. Empty: the embedded single-node mode.',
  ),
  kafkaTopicPrefix: setting<string>({ type: 'string' }, 'tributary.', 'TRIBUTARY_KAFKA_TOPIC_PREFIX', '--kafka-topic-prefix', 'Prefix of every Kafka topic and consumer group of this cluster; clusters sharing one Kafka use different prefixes.'),
  kafkaReplicationFactor: setting<number>({ type: 'int', min: 1, max: 16 }, 1, 'TRIBUTARY_KAFKA_REPLICATION_FACTOR', '--kafka-replication-factor', 'Replication factor of the topics Tributary creates (3 on a production Kafka cluster; 1 for a single broker).'),
  kafkaSessionTimeout: setting<number>(
    { type: 'duration' },
    10_000,
    'TRIBUTARY_KAFKA_SESSION_TIMEOUT',
    '--kafka-session-timeout',
    "How long a node that stopped heartbeating keeps its partitions before Kafka's consumer groups move them to the other nodes: the bound on how long a dead node's devices go unqueried and their records unprocessed.",
  ),
  console: setting<boolean>({ type: 'bool' }, true, 'TRIBUTARY_CONSOLE', '--console', 'Serve the web console at /console on the HTTP port (it uses the public API with the API key the user enters). false: no console.'),
  awsRegion: setting<string>(
    { type: 'pattern', pattern: /^[a-z0-9]+(-[a-z0-9]+)*$/, expected: 'a region name such as us-east-1 (lowercase letters, digits and hyphens)' },
    'us-east-1',
    'TRIBUTARY_AWS_REGION',
    '--aws-region',
    "Region in the change stream's ARN (arn:aws:dynamodb:<region>:...), the records' awsRegion and the functions' AWS_REGION / AWS_DEFAULT_REGION. Changes no eventID.",
  ),
  awsAccountId: setting<string>(
    { type: 'pattern', pattern: /^\d{12}$/, expected: 'a 12-digit account id' },
    '000000000000',
    'TRIBUTARY_AWS_ACCOUNT_ID',
    '--aws-account-id',
    "Account in the change stream's ARN and the functions' invokedFunctionArn. Changes no eventID.",
  ),
  advertisedHttpUrl: setting<string>(
    { type: 'string' },
    '',
    'TRIBUTARY_ADVERTISED_HTTP_URL',
    '--advertised-http-url',
    "Cluster mode: the URL other nodes use to forward a device's queries to this node (e.g. http://node-1:3000). Empty: the HTTP listener's own address.",
  ),
} as const;

export type SettingKey = keyof typeof SETTINGS;
export type Config = Readonly<{ [K in SettingKey]: (typeof SETTINGS)[K]['default'] }>;

/** A configuration problem that names the setting and where its value came from. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

function parseValue(key: SettingKey, raw: unknown, source: string): unknown {
  const def = SETTINGS[key];
  const fail = (why: string): never => {
    throw new ConfigError(`invalid ${key} (${source}): ${why} (got ${JSON.stringify(raw)})`);
  };
  const kind = def.kind;
  switch (kind.type) {
    case 'string':
    case 'path':
      if (typeof raw !== 'string') return fail('expected a string');
      return raw;
    case 'pattern':
      if (typeof raw !== 'string' || !kind.pattern.test(raw)) return fail(`expected ${kind.expected}`);
      return raw;
    case 'port':
    case 'int': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      const [min, max] = kind.type === 'port' ? [0, 65535] : [kind.min, kind.max];
      if (!Number.isSafeInteger(n) || n < min || n > max) return fail(`expected an integer from ${min} to ${max}`);
      return n;
    }
    case 'duration':
      if (kind.allowZero && (raw === 0 || (typeof raw === 'string' && raw.trim() === '0'))) return 0;
      if (typeof raw === 'number' && Number.isSafeInteger(raw) && raw > 0) return raw;
      if (typeof raw !== 'string') return fail('expected a duration such as 1h or 30d');
      try {
        return parseDuration(raw, key);
      } catch {
        return fail('expected a duration such as 1h or 30d');
      }
    case 'bool':
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === '1') return true;
      if (raw === 'false' || raw === '0') return false;
      return fail('expected true or false');
    case 'enum':
      if (typeof raw !== 'string' || !kind.values.includes(raw)) return fail(`expected one of ${kind.values.join(', ')}`);
      return raw;
  }
}

export interface ConfigSources {
  /** Path of a JSON config file (keys as in SETTINGS). */
  file?: string | undefined;
  env?: Record<string, string | undefined>;
  /** Values from command-line flags, already keyed by setting. */
  flags?: Partial<Record<SettingKey, unknown>>;
}

/** Resolves defaults → file → env → flags into one frozen, validated config. */
export function loadConfig(sources: ConfigSources = {}): Config {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(SETTINGS) as SettingKey[]) out[key] = SETTINGS[key].default;

  if (sources.file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(sources.file, 'utf8'));
    } catch (err) {
      throw new ConfigError(`cannot read config file ${sources.file}: ${(err as Error).message}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new ConfigError(`config file ${sources.file} must hold a JSON object`);
    }
    for (const [key, raw] of Object.entries(parsed)) {
      if (!(key in SETTINGS)) throw new ConfigError(`unknown setting ${JSON.stringify(key)} in ${sources.file}; known: ${Object.keys(SETTINGS).join(', ')}`);
      out[key] = parseValue(key as SettingKey, raw, `config file ${sources.file}`);
    }
  }
  const env = sources.env ?? {};
  for (const key of Object.keys(SETTINGS) as SettingKey[]) {
    const raw = env[SETTINGS[key].env];
    if (raw !== undefined && raw !== '') out[key] = parseValue(key, raw, `environment ${SETTINGS[key].env}`);
  }
  for (const [key, raw] of Object.entries(sources.flags ?? {})) {
    if (raw === undefined) continue;
    if (!(key in SETTINGS)) throw new ConfigError(`unknown setting ${key}`);
    out[key] = parseValue(key as SettingKey, raw, `flag ${SETTINGS[key as SettingKey].flag}`);
  }
  return Object.freeze(out) as Config;
}

/** A config for tests and embedding: defaults plus overrides, validated the same way. */
export function configWith(overrides: Partial<Record<SettingKey, unknown>>): Config {
  return loadConfig({ flags: overrides });
}
