/** Access (admins): API keys with their policies (create, delete) and the audit log. */
import { api, get, withQuery } from './api.js';
import { actionForm, el, errorNote, field, replace, table, time } from './dom.js';
import { isAdmin } from './session.js';

interface Key {
  id: string;
  name: string;
  policy: { statements: Array<{ actions: string[]; devices: string[] }> };
  createdAt: number;
}
interface AuditEntry {
  time: number;
  keyId: string | null;
  method: string;
  path: string;
  status: number;
  sourceIp: string;
}

export async function accessPage(root: HTMLElement): Promise<void> {
  if (!isAdmin()) {
    replace(root, el('h1', {}, 'Access'), el('p', { class: 'muted' }, 'API keys and the audit log are for keys with admin:* on every device.'));
    return;
  }
  const keysBox = el('section', { 'aria-label': 'API keys' });
  const auditBox = el('section', { 'aria-label': 'Audit log' });
  const name = el('input', { id: 'key-name', name: 'name', required: true, placeholder: 'site 7 dashboard' });
  const policy = el('textarea', { id: 'key-policy', name: 'policy', rows: 4 });
  policy.value = JSON.stringify({ statements: [{ actions: ['telemetry:Read', 'streams:Read'], devices: ['site-7-*'] }] });
  const token = el('code', { id: 'new-key' });
  const create = actionForm('Create key', [...field('Name', name), ...field('Policy (JSON)', policy)], async () => {
    const created = await api<{ id: string; key: string }>('POST', '/v1/keys', { name: name.value, policy: JSON.parse(policy.value) as unknown });
    token.textContent = created.key;
    void showKeys();
    void showAudit();
    return `Created ${created.id}. Its key, shown only now:`;
  });
  create.append(' ', token);
  replace(root, el('h1', {}, 'Access'), el('h2', {}, 'API keys'), keysBox, create, el('h2', {}, 'Audit log'), auditBox);

  async function showKeys(): Promise<void> {
    try {
      const page = await get<{ items: Key[] }>('/v1/keys?limit=1000');
      replace(
        keysBox,
        table(
          ['Key', 'Name', 'Policy', 'Created', ''],
          page.items.map((k) => [
            el('code', {}, k.id),
            k.name,
            el('code', {}, k.policy.statements.map((s) => `${s.actions.join(',')} on ${s.devices.join(',')}`).join('; ')),
            time(k.createdAt),
            el('button', { type: 'button', onclick: () => void api('DELETE', `/v1/keys/${encodeURIComponent(k.id)}`).then(showKeys, (err: unknown) => replace(keysBox, errorNote(err))) }, 'Delete'),
          ]),
          'The admin key (admin.key) is not listed.',
        ),
      );
    } catch (err) {
      replace(keysBox, errorNote(err));
    }
  }
  const showAudit = async (): Promise<void> => {
    try {
      const page = await get<{ items: AuditEntry[] }>(withQuery('/v1/audit', { limit: 100 }));
      replace(auditBox, table(['Time', 'Key', 'Request', 'Status', 'From'], page.items.map((e) => [time(e.time), e.keyId ?? '—', `${e.method} ${e.path}`, String(e.status), e.sourceIp]), 'Newest first'));
    } catch (err) {
      replace(auditBox, errorNote(err));
    }
  };
  await Promise.all([showKeys(), showAudit()]);
}
