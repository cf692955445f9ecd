/**
 * Building the page. Everything that may come from a device or a user (ids, tags, values,
 * log lines) goes in as text (`textContent`, attribute values), never as markup: the page
 * never uses `innerHTML`, so a device id like `<img onerror=...>` stays a string.
 */
type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | undefined | ((ev: Event) => void)>;

/** `el('a', { href: '#/x', onclick: fn }, 'text', child)` */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === 'function') node.addEventListener(name.replace(/^on/, ''), value);
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  append(node, ...children);
  return node;
}

export function append(node: Node, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
}

/** Replaces a node's children. */
export function replace(node: Node, ...children: Child[]): void {
  while (node.firstChild) node.firstChild.remove();
  append(node, ...children);
}

/** A table; each cell is text or a node. */
export function table(headers: string[], rows: Child[][], caption?: string): HTMLTableElement {
  return el(
    'table',
    {},
    caption === undefined ? null : el('caption', {}, caption),
    el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, ...rows.map((r) => el('tr', {}, ...r.map((c) => el('td', {}, c))))),
  );
}

/** A labelled figure for the overview. */
export function stat(label: string, value: Child, id?: string): HTMLElement {
  return el('div', { class: 'stat' }, el('div', { class: 'stat-label' }, label), el('div', { class: 'stat-value', ...(id === undefined ? {} : { id }) }, value));
}

export function time(ms: number | null | undefined): string {
  return ms === null || ms === undefined ? '—' : new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function num(n: number | null | undefined, digits = 1): string {
  return n === null || n === undefined ? '—' : Number.isInteger(n) ? String(n) : n.toFixed(digits);
}

/** A line saying what failed, for a panel that could not load. */
export function errorNote(err: unknown): HTMLElement {
  return el('p', { class: 'error', role: 'alert' }, err instanceof Error ? err.message : String(err));
}

/**
 * A form whose submit runs `action` and shows what it answered (or why it failed) in a
 * status line next to the button, for the pages' small write actions.
 */
export function actionForm(label: string, fields: Node[], action: () => Promise<string>, id?: string): HTMLFormElement {
  const status = el('span', { role: 'status', class: 'muted' });
  const form = el('form', id === undefined ? {} : { id }, ...fields, el('button', { type: 'submit' }, label), ' ', status);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    status.textContent = '…';
    action().then(
      (text) => (status.textContent = text),
      (err: unknown) => (status.textContent = err instanceof Error ? err.message : String(err)),
    );
  });
  return form;
}

/** A label and its control. */
export function field(label: string, control: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement): Node[] {
  return [el('label', { for: control.id }, label), control];
}
