# Tributary node image: builds the TypeScript and runs `tributary start`.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/package.json ./package.json
COPY functions/examples ./functions/examples
VOLUME ["/data"]
ENTRYPOINT ["node", "dist/bin/tributary.js"]
CMD ["start", "--data-dir", "/data"]
