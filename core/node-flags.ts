/**
 * The V8 flags a Tributary server runs with: `npm start`, the Dockerfile's entrypoint
 * and the `tributary` command's shebang pass them (test/node-flags.test.ts keeps those
 * in step with this list), and so do the servers that tests and benchmarks start,
 * baselines included.
 *
 * `--max-semi-space-size=64`: a young generation of up to 2 × 64 MiB instead of V8's
 * 2 × 16 MiB. Under load about a thousand publishes are in flight and alive at every
 * scavenge, so a scavenge costs about the same whatever the young generation's size,
 * and a larger one scavenges a quarter as often. Measured at saturation (100
 * connections × 10 QoS 1 publishes in flight): broker CPU per reading −9 to −11%,
 * readings/s +6 to +8% (medians of 5 alternating runs, twice); peak RSS 417 MB against
 * 275 MB.
 */
/** Largest semi-space, MiB (V8's own on 64-bit Node 20: 16). */
export const SEMI_SPACE_MB = 64;

export const NODE_FLAGS: readonly string[] = [`--max-semi-space-size=${SEMI_SPACE_MB}`];
