/**
 * ARNs in AWS's form, for the region and account Tributary is configured with
 * (`--aws-region`, `--aws-account-id`), so handlers that parse ARNs work unmodified.
 *
 * @module
 */
import { SETTINGS, type Config } from './config.js';

/** The region and account every ARN and event carries. */
export interface AwsLocation {
  region: string;
  accountId: string;
}

/** The settings' defaults: us-east-1, account 000000000000. */
export const DEFAULT_AWS_LOCATION: AwsLocation = { region: SETTINGS.awsRegion.default, accountId: SETTINGS.awsAccountId.default };

export function awsLocationOf(config: Pick<Config, 'awsRegion' | 'awsAccountId'>): AwsLocation {
  return { region: config.awsRegion, accountId: config.awsAccountId };
}

/** The DynamoDB table the telemetry store presents itself as. */
export const TELEMETRY_TABLE = 'telemetry';

/**
 * AWS's StreamLabel: the stream's creation time in ISO 8601, UTC, with milliseconds and
 * without a zone designator (`2015-05-20T20:51:10.252` in the DynamoDB Streams API
 * examples). `createdAt` is the ISO text the logs persist (`...T20:51:10.252Z`).
 */
export function streamLabelOf(createdAt: string): string {
  return new Date(createdAt).toISOString().replace(/Z$/, '');
}

/** `arn:aws:dynamodb:<region>:<account>:table/telemetry/stream/<label>` */
export function streamArnOf(location: AwsLocation, label: string): string {
  return `arn:aws:dynamodb:${location.region}:${location.accountId}:table/${TELEMETRY_TABLE}/stream/${label}`;
}

/** `arn:aws:lambda:<region>:<account>:function:<name>`, Lambda's unqualified function ARN (`context.invokedFunctionArn`). */
export function functionArnOf(location: AwsLocation, name: string): string {
  return `arn:aws:lambda:${location.region}:${location.accountId}:function:${name}`;
}

export interface StreamArnParts {
  region: string;
  accountId: string;
  table: string;
  label: string;
}

// Also the earlier form (`arn:tributary:dynamodb:local:...:stream/<ISO with Z>`), which
// dead-letter queue entries written before region and account were settings still carry.
const STREAM_ARN = /^arn:(?:aws|tributary):dynamodb:([^:]+):([^:]+):table\/([^/]+)\/stream\/(.+?)Z?$/;

/** The parts of a DynamoDB stream ARN; undefined when `arn` is not one. */
export function parseStreamArn(arn: string): StreamArnParts | undefined {
  const m = STREAM_ARN.exec(arn);
  if (m === null) return undefined;
  return { region: m[1] as string, accountId: m[2] as string, table: m[3] as string, label: m[4] as string };
}

/**
 * Whether two stream ARNs name the same stream. Region and account are settings that may
 * change between restarts; the table and the label (the stream's creation time) are what
 * identify the stream of a data directory or a cluster.
 */
export function sameStream(a: string, b: string): boolean {
  const x = parseStreamArn(a);
  const y = parseStreamArn(b);
  return x !== undefined && y !== undefined && x.table === y.table && x.label === y.label;
}
