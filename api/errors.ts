/**
 * Error handling of the HTTP API: every failure leaves as its HTTP status and
 * `{ "error": { "code", "message", "field"? } }` with a code from the catalog in
 * `core/errors.ts`. Fastify's own errors (validation, body parsing, bad URLs) are
 * translated here, in one place; anything unrecognised becomes a generic 500 whose
 * details go to the log only, so no stack trace or internal message reaches a client.
 *
 * @module
 */
import { maxHeaderSize, STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type {
  ConnectionError,
  FastifyError,
  FastifyPluginAsync,
  FastifyReply,
  FastifyRequest,
  FastifySchemaValidationError,
} from 'fastify';
import { isTributaryError, TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { DEVICE_ID_PATTERN } from '../core/ids.js';
import type { ErrorBody } from './schemas.js';

/** Which part of the request a schema error is about (fastify does not export its name for this). */
export type SchemaErrorDataVar = NonNullable<FastifyError['validationContext']>;

const WHERE: Record<SchemaErrorDataVar, string> = {
  params: 'path parameter',
  querystring: 'query parameter',
  headers: 'header',
  body: 'body field',
};

/**
 * The field a schema error is about, as a dotted path (`values.temp`, `[0].ts`). With
 * Ajv's `allErrors: false` (fastify's default, kept because `true` is a DoS vector)
 * the last error is the decisive one: it is the only error, or the `anyOf` that
 * failed after its branches.
 */
export function fieldOf(e: FastifySchemaValidationError): string | undefined {
  const segments = e.instancePath
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  // `required` and `additionalProperties` report the parent object; the field is a param.
  const child = e.keyword === 'required' ? e.params['missingProperty'] : e.keyword === 'additionalProperties' ? e.params['additionalProperty'] : undefined;
  if (typeof child === 'string') segments.push(child);
  if (segments.length === 0) return undefined;
  return segments.map((s, i) => (/^\d+$/.test(s) ? `[${s}]` : i === 0 ? s : `.${s}`)).join('');
}

/**
 * Fastify `schemaErrorFormatter`: turns Ajv's errors into one sentence a client can act
 * on ("query parameter limit must be <= 10000"). Fastify attaches `validation` and
 * `validationContext` to the returned error, which the error handler uses for code and field.
 */
export function formatSchemaErrors(errors: FastifySchemaValidationError[], dataVar: SchemaErrorDataVar): Error {
  const e = errors[errors.length - 1];
  if (e === undefined) return new Error(`${dataVar} is invalid`);
  const field = fieldOf(e);
  if (e.keyword === 'additionalProperties') return new Error(`unknown ${WHERE[dataVar]} ${field ?? ''}`.trimEnd());
  const subject = field === undefined ? (dataVar === 'body' ? 'body' : dataVar) : `${WHERE[dataVar]} ${field}`;
  if (e.keyword === 'pattern' && e.params['pattern'] === DEVICE_ID_PATTERN) {
    return new Error(`${subject} must be a device id: 1-128 characters of A-Z a-z 0-9 . _ : -`);
  }
  if (e.keyword === 'enum' && Array.isArray(e.params['allowedValues'])) {
    return new Error(`${subject} must be one of ${e.params['allowedValues'].join(', ')}`);
  }
  return new Error(`${subject} ${e.message ?? 'is invalid'}`);
}

function isFastifyError(err: unknown): err is FastifyError {
  return err instanceof Error && typeof (err as Partial<FastifyError>).code === 'string' && (err as FastifyError).code.startsWith('FST_');
}

/**
 * Translates an error into its catalog form, or `undefined` when it is not one the
 * client may see (a bug, a foreign library's error): those become InternalError.
 */
export function toTributaryError(err: unknown, request: FastifyRequest): TributaryError | undefined {
  if (isTributaryError(err)) return err;
  if (!isFastifyError(err)) return undefined;
  if (err.validation !== undefined) {
    const last = err.validation[err.validation.length - 1];
    const field = last === undefined ? undefined : fieldOf(last);
    // Params and query are "parameters"; a body that does not fit is a ValidationError,
    // the same code MQTT ingest uses for a bad payload.
    const code = err.validationContext === 'body' ? 'ValidationError' : 'InvalidParameter';
    return new TributaryError(code, err.message, field === undefined ? {} : { field });
  }
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new TributaryError('PayloadTooLarge', `request body exceeds the limit of ${request.routeOptions.bodyLimit} bytes`);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new TributaryError('ValidationError', 'request body is not valid JSON');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new TributaryError('ValidationError', 'request body is empty but Content-Type is application/json');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      // The catalog has no 415 code; the body is what the client must change.
      return new TributaryError(
        'ValidationError',
        request.headers['content-type'] === undefined
          ? 'the request has a body but no Content-Type; send application/json'
          : `unsupported Content-Type ${JSON.stringify(request.headers['content-type'])}; send application/json`,
      );
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new TributaryError('ValidationError', 'request body size does not match Content-Length');
    case 'FST_ERR_BAD_URL':
      return new TributaryError('InvalidParameter', 'the URL is not valid (malformed percent-encoding)');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new TributaryError('InvalidParameter', 'a path parameter is too long');
  }
  // Other client errors raised by fastify carry fixed, non-sensitive messages.
  const status = err.statusCode ?? 500;
  if (status === 404) return new TributaryError('NotFound', err.message);
  if (status === 413) return new TributaryError('PayloadTooLarge', err.message);
  if (status >= 400 && status < 500) return new TributaryError('InvalidParameter', err.message);
  return undefined;
}

/** Sends `err` in the API's error shape, logging it at a level that fits its status. */
export function sendError(err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const known = toTributaryError(err, request);
  if (known === undefined) {
    request.log.error({ err }, 'unhandled error');
    const body: ErrorBody = {
      error: { code: 'InternalError', message: `internal error; the server log has the details (request id ${request.id})` },
    };
    return reply.code(500).send(body);
  }
  if (known.status >= 500) request.log.error({ err }, known.message);
  else request.log.info({ code: known.code, field: known.field }, known.message);
  const body: ErrorBody = { error: known.toJSON() };
  return reply.code(known.status).send(body);
}

/**
 * For fastify's `frameworkErrors` option: errors raised before routing (a malformed
 * URL, an over-long path parameter) would otherwise be answered in fastify's own shape.
 */
export function frameworkErrors(err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  void sendError(err, request, reply);
}

/**
 * Fastify's `clientErrorHandler`: what Node's HTTP server reports before a request
 * reaches fastify (a request not received within the timeout, headers over the size
 * limit, a method or request line the parser refuses), answered in the API's envelope
 * with the status Node itself would send (lib/_http_server.js, `socketOnError`), then
 * the connection is closed. As in Node, nothing is written into a response already
 * under way on the socket.
 */
export class ClientErrors {
  /** The socket's latest response, to tell whether one is under way. */
  private readonly responses = new WeakMap<Socket, ServerResponse>();

  constructor(
    private readonly logger: Logger,
    private readonly timeouts: { headersTimeout: number; requestTimeout: number },
  ) {}

  /** For the server's `request` event. */
  readonly track = (request: IncomingMessage, response: ServerResponse): void => {
    this.responses.set(request.socket, response);
  };

  readonly handler = (err: ConnectionError, socket: Socket): void => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    const known = this.toTributaryError(err);
    this.logger.debug({ code: known.code, cause: err.code }, known.message);
    const response = this.responses.get(socket);
    if (!socket.writable || (response !== undefined && response.headersSent && !response.writableFinished)) {
      socket.destroy();
      return;
    }
    const body = JSON.stringify({ error: known.toJSON() } satisfies ErrorBody);
    const head = `HTTP/1.1 ${known.status} ${STATUS_CODES[known.status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`;
    // Destroyed once written: the rest of what the client sends is not read.
    socket.end(head + body, () => socket.destroy());
  };

  private toTributaryError(err: ConnectionError): TributaryError {
    switch (err.code) {
      case 'ERR_HTTP_REQUEST_TIMEOUT':
        return new TributaryError('RequestTimeout', `the request was not received in time (the headers within ${this.timeouts.headersTimeout} ms, all of it within ${this.timeouts.requestTimeout} ms)`);
      case 'HPE_HEADER_OVERFLOW':
        return new TributaryError('HeadersTooLarge', `the request line and headers exceed ${maxHeaderSize} bytes`);
      case 'HPE_INVALID_METHOD':
        return new TributaryError('MalformedRequest', 'the HTTP method is not one the server knows');
      default:
        return new TributaryError('MalformedRequest', `the HTTP request could not be parsed (${err.code})`);
    }
  }
}

/**
 * Plugin: the error handler and the 404 handler. Marked `skip-override` (what
 * `fastify-plugin` does) so that both apply to the root instance and so to every route
 * plugin registered after it, rather than to an encapsulated child only.
 */
export const errorHandling: FastifyPluginAsync = async (app) => {
  // Every method some route has: those are the ones a 405's `Allow` can list.
  const methods = new Set<string>();
  app.addHook('onRoute', (route) => {
    for (const m of [route.method].flat()) methods.add(m);
  });
  app.setErrorHandler((err, request, reply) => sendError(err, request, reply));
  app.setNotFoundHandler((request, reply) => {
    const path = (request.raw.url ?? '').split('?')[0] ?? '';
    // No route has this method but some have others: 405 with `Allow` (RFC 9110 §15.5.6),
    // not 404. A route's own 404 (`callNotFound`: a missing docs file) stays a 404.
    const routed = request.server.findRoute({ method: request.method, url: path }) !== null;
    const allow = routed ? [] : [...methods].filter((method) => request.server.findRoute({ method, url: path }) !== null);
    const shown = `${request.method} ${path.length > 200 ? `${path.slice(0, 200)}...` : path}`;
    if (allow.length > 0) {
      void reply.header('allow', allow.join(', '));
      return sendError(new TributaryError('MethodNotAllowed', `${shown} is not allowed; this path takes ${allow.join(', ')}`), request, reply);
    }
    const body: ErrorBody = { error: { code: 'NotFound', message: `no route matches ${shown}` } };
    return reply.code(404).send(body);
  });
};
Object.assign(errorHandling, { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'tributary-errors' });
