# Tributary node image: one `tributary start`, single-node or (with TRIBUTARY_KAFKA_BROKERS)
# a cluster node. docker-compose.yml runs three of them; README "Running a cluster".

# Production dependencies only; they are what the runtime image ships. --ignore-scripts: the
# package's own `prepare` builds with tsc, a dev dependency; the native modules load from
# their prebuilds (checked in the last stage).
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# The TypeScript build needs the dev dependencies (tsc, types).
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# The sources are not here yet for `prepare` to build: `npm run build` below does.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY . .
# The image ships the server, not the tests (which import dev dependencies) or the benchmarks.
RUN npm run build && rm -rf dist/test dist/bench dist/.tsbuildinfo && find dist -name '*.test.js*' -delete

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY functions/examples ./functions/examples
# classic-level is native: fail the build here, not at the first start, if the
# installed module has no prebuild that loads on this platform (slim has no compiler).
RUN node -e "require('classic-level'); console.log('classic-level loads')"

# The image's own user (uid 1000), never root. /data is created here so that a fresh
# named volume mounted on it inherits this ownership.
RUN mkdir /data && chown node:node /data
USER node
VOLUME ["/data"]

# Inside a container loopback is unreachable from outside, so the image binds every
# interface — which is secured mode (device credentials, API keys; admin key in /data).
ENV TRIBUTARY_DATA_DIR=/data \
    TRIBUTARY_MQTT_HOST=0.0.0.0 \
    TRIBUTARY_HTTP_HOST=0.0.0.0
EXPOSE 1883 3000

# No curl in node images: probe /readyz with Node's fetch, on the port (and scheme) the
# environment configures. Over TLS the certificate is not checked: this is a loopback
# probe, and the certificate names the public host, not 127.0.0.1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "const tls = Boolean(process.env.TRIBUTARY_TLS_CERT); if (tls) process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'; fetch((tls ? 'https' : 'http') + '://127.0.0.1:' + (process.env.TRIBUTARY_HTTP_PORT || '3000') + '/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

ENTRYPOINT ["node", "--max-semi-space-size=64", "dist/bin/tributary.js"]
CMD ["start"]
