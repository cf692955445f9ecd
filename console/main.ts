/** The console's shell: navigation, the API key prompt (secured mode), and a hash router over the pages. */
import { accessPage } from './access.js';
import { ApiError, apiKey, get, setApiKey, whenUnauthorized } from './api.js';
import { deviceList, devicePage } from './devices.js';
import { el, errorNote, replace } from './dom.js';
import { functionList, functionPage } from './functions.js';
import { overview } from './overview.js';
import { isAdmin, isSecured, setSession, type WhoAmI } from './session.js';
import { streamPage } from './stream.js';

const main = document.getElementById('main') as HTMLElement;
const who = document.getElementById('who') as HTMLElement;
let current: AbortController | undefined;

function loginForm(message: string): void {
  const input = el('input', { type: 'password', id: 'api-key', name: 'key', autocomplete: 'off', required: true, placeholder: 'tak_…' });
  const form = el(
    'form',
    { class: 'login' },
    el('h1', {}, 'API key'),
    el('p', {}, message),
    el('label', { for: 'api-key' }, 'Key'),
    input,
    el('p', { class: 'muted' }, 'Kept for this tab only (sessionStorage); sent as Authorization: Bearer.'),
    el('button', { type: 'submit' }, 'Sign in'),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    setApiKey(input.value.trim());
    void route();
  });
  current?.abort();
  replace(main, form);
  input.focus();
}

whenUnauthorized(() => loginForm(apiKey() === null ? 'This server is in secured mode: enter an API key.' : 'That key was not accepted. Enter another.'));

async function showWho(): Promise<void> {
  const me = await get<WhoAmI>('/v1/whoami');
  setSession(me);
  // Keys and the audit log exist in secured mode, for admins.
  (document.getElementById('nav-access') as HTMLElement).hidden = !(isSecured() && isAdmin());
  const signOut = el('button', { type: 'button', onclick: () => (setApiKey(null), loginForm('Signed out.')) }, 'Sign out');
  replace(who, me.mode === 'open' ? el('span', { class: 'badge' }, 'open mode') : el('span', {}, el('span', { class: 'badge' }, 'secured'), ' ', me.name ?? me.keyId ?? '', ' ', signOut));
}

async function route(): Promise<void> {
  current?.abort();
  current = new AbortController();
  const signal = current.signal;
  const [path = '', search = ''] = location.hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter((p) => p !== '').map(decodeURIComponent);
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === `#/${parts[0] ?? ''}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    await showWho();
    if (parts[0] === 'devices' && parts[1] !== undefined) await devicePage(main, parts[1], signal);
    else if (parts[0] === 'devices') await deviceList(main, new URLSearchParams(search));
    else if (parts[0] === 'functions' && parts[1] !== undefined) await functionPage(main, parts[1], signal);
    else if (parts[0] === 'functions') await functionList(main);
    else if (parts[0] === 'stream') await streamPage(main, signal);
    else if (parts[0] === 'access') await accessPage(main);
    else await overview(main, signal);
    main.focus({ preventScroll: true });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    replace(main, el('h1', {}, 'Could not load this page'), errorNote(err));
  }
}

window.addEventListener('hashchange', () => void route());
void route();
