// Work units as the timeline shows them: each type for what it is. Everything is
// built as DOM nodes with textContent, never innerHTML, so no payload can inject
// markup or script (the markdown below is a small subset rendered that way).

export const TYPES = ['UNKNOWN', 'MESSAGE', 'REASONING', 'TOOL_CALL', 'TOOL_RESULT', 'FILE_CHANGE', 'TASK_STATUS',
  'ERROR', 'SYSTEM', 'SUMMARY'];
const REL = ['', 'follows', 'caused by', 'depends on', 'references', 'responds to', 'modifies', 'replaces'];

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

export const time = (ts) => (ts ? new Date(ts.seconds * 1000 + Math.floor((ts.nanos || 0) / 1e6)) : null);
export const fmtTime = (ts) => { const d = time(ts); return d ? d.toLocaleString() : ''; };

// Inline markdown: `code`, **bold**, *italic*, [text](http…) links.
function inline(text) {
  const out = [];
  const re = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*)|(\[[^\]]+\]\((https?:\/\/[^)\s]+)\))/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1]) out.push(el('code', {}, m[1].slice(1, -1)));
    else if (m[2]) out.push(el('strong', {}, m[2].slice(2, -2)));
    else if (m[3]) out.push(el('em', {}, m[3].slice(1, -1)));
    else out.push(el('a', { href: m[5], rel: 'noopener noreferrer', target: '_blank' }, m[4].slice(1, m[4].indexOf(']'))));
    last = re.lastIndex;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

// Block markdown: ``` fences, # headings, - / 1. lists, paragraphs.
export function markdown(text) {
  const root = el('div', { class: 'md' });
  const lines = text.split('\n');
  for (let i = 0; i < lines.length;) {
    const line = lines[i];
    if (line.startsWith('```')) {
      const code = [];
      for (i++; i < lines.length && !lines[i].startsWith('```'); i++) code.push(lines[i]);
      i++;
      root.append(el('pre', {}, el('code', {}, code.join('\n'))));
    } else if (/^#{1,6} /.test(line)) {
      const level = Math.min(6, line.indexOf(' ') + 2);  // # → h3: inside a unit, keep headings small
      root.append(el(`h${Math.min(level, 6)}`, {}, inline(line.replace(/^#+ /, ''))));
      i++;
    } else if (/^\s*([-*]|\d+\.) /.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const list = el(ordered ? 'ol' : 'ul');
      for (; i < lines.length && /^\s*([-*]|\d+\.) /.test(lines[i]); i++)
        list.append(el('li', {}, inline(lines[i].replace(/^\s*([-*]|\d+\.) /, ''))));
      root.append(list);
    } else if (line.trim() === '') {
      i++;
    } else {
      const para = [];
      for (; i < lines.length && lines[i].trim() !== '' && !lines[i].startsWith('```') && !/^#{1,6} /.test(lines[i]) &&
        !/^\s*([-*]|\d+\.) /.test(lines[i]); i++) para.push(lines[i]);
      root.append(el('p', {}, inline(para.join('\n'))));
    }
  }
  return root;
}

const looksLikeDiff = (t) => /^(--- |\+\+\+ |@@ |diff --git )/m.test(t) && /^[+-]/m.test(t);

function diff(text) {
  const pre = el('pre', { class: 'diff' });
  for (const line of text.split('\n')) {
    const cls = line.startsWith('@@') ? 'hunk' : line.startsWith('+') && !line.startsWith('+++') ? 'add'
      : line.startsWith('-') && !line.startsWith('---') ? 'del' : null;
    pre.append(cls ? el('span', { class: cls }, line) : line + '\n');
  }
  return pre;
}

function bytesOf(b64) {
  try { return Uint8Array.from(atob(b64 || ''), (c) => c.charCodeAt(0)); } catch { return new Uint8Array(); }
}

// A payload that is not text: its size and a download.
function binary(unit) {
  const bytes = bytesOf(unit.payload);
  const a = el('a', { href: '#', download: `${unit.id}.bin` }, 'download');
  a.addEventListener('click', () => { a.href = URL.createObjectURL(new Blob([bytes])); }, { once: true });
  return el('div', {}, el('span', { class: 'badge' }, `binary, ${bytes.length} bytes`), ' ', a);
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

// The unit's element. `ctx` gives what pairing needs: resultOf(call_id) → the
// TOOL_RESULT unit when loaded; callOf(call_id) → the TOOL_CALL unit; open(id) jumps
// to a unit by id.
export function renderUnit(unit, ctx) {
  const type = TYPES[unit.type] || String(unit.type);
  const text = unit.text;
  const body = el('div', { class: 'body' });
  if ((text === undefined || text === null) && unit.payload) body.append(binary(unit));
  else if (unit.type === 1) body.append(markdown(text || ''));
  else if (unit.type === 2) body.append(el('details', {}, el('summary', {}, `reasoning · ${(text || '').length} chars`),
    el('pre', {}, text || '')));
  else if (unit.type === 3) {
    body.append(el('pre', {}, pretty(text || '')));
    const result = ctx.resultOf(unit.call_id);
    body.append(el('div', { class: 'result' }, result
      ? [el('span', { class: 'badge done' }, 'result'), ' ', el('a', { href: `#u-${result.seq}`, 'data-seq': result.seq }, `#${result.seq}`),
        el('pre', {}, pretty(result.text ?? '(binary)'))]
      : el('span', { class: 'badge pending' }, 'pending: no result yet')));
  } else if (unit.type === 4) {
    const call = ctx.callOf(unit.call_id);
    body.append(call ? el('div', { class: 'small muted' }, 'result of ', el('a', { href: `#u-${call.seq}`, 'data-seq': call.seq }, `#${call.seq}`))
      : null, el('pre', {}, pretty(text || '')));
  } else if (unit.type === 5) body.append(looksLikeDiff(text || '') ? diff(text) : el('pre', {}, text || ''));
  else if (unit.type === 6) body.append(el('span', { class: 'badge' }, text || ''));
  else body.append(el('pre', {}, text || ''));

  const meta = Object.entries(unit.meta || {});
  const rels = (unit.relationships || []).map((r) => el('a', { href: '#', 'data-unit': r.target_id,
    onclick: (e) => { e.preventDefault(); ctx.open(r.target_id); } }, `${REL[r.type] || 'related to'} ${r.target_id.slice(-8)}`));
  const classes = ['unit', type.toLowerCase()];
  return el('article', { class: classes.join(' '), id: `u-${unit.seq}`, 'data-seq': unit.seq, 'data-type': type, tabindex: '-1' },
    el('header', {},
      el('span', { class: 'seq' }, `#${unit.seq}`),
      el('span', { class: 'author' }, unit.agent_id),
      el('span', { class: 'kind' }, type),
      unit.call_id ? el('span', { class: 'small' }, `call ${unit.call_id}`) : null,
      el('time', { datetime: time(unit.ts)?.toISOString() }, fmtTime(unit.ts)),
      meta.length ? el('span', { class: 'small' }, meta.map(([k, v]) => `${k}=${v}`).join(' ')) : null),
    body,
    rels.length ? el('div', { class: 'rels' }, rels) : null);
}
