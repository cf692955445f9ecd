/**
 * The error catalog: every error Tributary reports to a client carries one of these
 * stable codes (the AWS-style PascalCase words of the product contract) with its HTTP
 * status and whether retrying can help. `docs/errors.md` lists the same codes; a test
 * keeps the two in step.
 */
export const ERROR_CATALOG = {
  InvalidParameter: { status: 400, retriable: false, description: 'A path or query parameter is malformed or out of range.' },
  MalformedRequest: { status: 400, retriable: false, description: 'The HTTP request itself could not be parsed (an unknown method, a malformed request line or header).' },
  ValidationError: { status: 400, retriable: false, description: 'The request body or a published payload does not match the expected shape.' },
  InvalidFunctionCode: { status: 400, retriable: false, description: 'Deployed code does not parse or exports no `handler`; the message gives file:line:column.' },
  Unauthorized: { status: 401, retriable: false, description: 'No credentials, or credentials that do not verify.' },
  AccessDenied: { status: 403, retriable: false, description: 'The credentials are valid but their policy does not allow the action.' },
  DeviceNotFound: { status: 404, retriable: false, description: 'No device with that id exists.' },
  FunctionNotFound: { status: 404, retriable: false, description: 'No function with that name is deployed.' },
  NotFound: { status: 404, retriable: false, description: 'No route or resource matches the request.' },
  MethodNotAllowed: { status: 405, retriable: false, description: 'The path exists but not with this HTTP method; the `Allow` header lists the methods it has.' },
  RequestTimeout: { status: 408, retriable: true, description: 'The client took longer than `--http-request-timeout-ms` to send the whole request (headers and body).' },
  Conflict: { status: 409, retriable: false, description: 'The request conflicts with the current state of the resource.' },
  PayloadTooLarge: { status: 413, retriable: false, description: 'The request body or MQTT payload exceeds the configured limit.' },
  Throttled: { status: 429, retriable: true, description: 'A rate limit was exceeded; retry after a pause.' },
  HeadersTooLarge: { status: 431, retriable: false, description: 'The request line and headers exceed the HTTP server\'s limit (16 KiB).' },
  StoreUnavailable: { status: 503, retriable: true, description: 'The store cannot accept writes right now (closed, disk full, reopening).' },
  InternalError: { status: 500, retriable: true, description: 'An unexpected failure inside Tributary; the log has the details.' },
} as const satisfies Record<string, { status: number; retriable: boolean; description: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

/** An error with a stable catalog code; the only error type that crosses module borders. */
export class TributaryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly retriable: boolean;
  /** The input field the error is about, when there is one (`from`, `ts`, ...). */
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TributaryError';
    this.code = code;
    this.status = ERROR_CATALOG[code].status;
    this.retriable = ERROR_CATALOG[code].retriable;
    this.field = options.field;
  }

  toJSON(): { code: ErrorCode; message: string; field?: string } {
    return this.field === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, field: this.field };
  }
}

export function isTributaryError(err: unknown): err is TributaryError {
  return err instanceof TributaryError;
}

export function invalidParameter(field: string, message: string): TributaryError {
  return new TributaryError('InvalidParameter', message, { field });
}
