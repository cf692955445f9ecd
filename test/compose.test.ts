import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { hasTool, ROOT } from './process.js';

// There is no Docker engine on these machines: the compose file is validated, not run.
describe('docker-compose.yml', () => {
  it.skipIf(!hasTool('docker-compose'))('is a valid compose file', () => {
    const res = spawnSync('docker-compose', ['config', '--quiet'], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
    expect(res.status, res.stderr).toBe(0);
  });
});
