// chatd web client: one WebSocket to /ws, one command line per frame out,
// one JSON event per frame in (see docs/PROTOCOL.md). No framework, no
// build step. All user data goes into the DOM through textContent.
'use strict';

(() => {
  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);
  const lower = (s) => String(s).toLowerCase();
  const NICK_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  const MAX_ITEMS = 2000; // per conversation; the oldest lines are dropped
  const GROUP_SECONDS = 300; // consecutive messages within 5 min share a header
  const BACKOFF_FIRST = 0.5; // seconds; doubles on every failed attempt
  const BACKOFF_MAX = 30;
  const PAGE = 50; // older messages asked for at a time, when scrolled to the top
  const NEAR_TOP = 200; // pixels from the top of the timeline that load older messages
  const READ_EVERY = 1000; // ms: at most one /read a second per conversation
  const READ_SETTLE = 200; // ms: a burst of messages (a history) gets one /read, after it

  /** Create an element with a class and optional text (always textContent). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const pad = (n) => String(n).padStart(2, '0');
  const SVG_NS = 'http://www.w3.org/2000/svg';

  function timeNode(ts) {
    const d = ts ? new Date(ts * 1000) : new Date();
    const t = el('time', 'time', `${pad(d.getHours())}:${pad(d.getMinutes())}`);
    t.dateTime = d.toISOString();
    t.title = d.toLocaleString();
    return t;
  }

  /** A stable colour class (hue-0 … hue-11) for a nickname. */
  function hue(nick) {
    let h = 0;
    for (const ch of lower(nick)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return `hue-${h % 12}`;
  }

  function avatar(nick) {
    const a = el('span', `avatar ${hue(nick)}`, (nick[0] || '?').toUpperCase());
    a.setAttribute('aria-hidden', 'true');
    return a;
  }

  /** Append text to a parent, turning http(s) URLs into links. */
  function appendLinkified(parent, text) {
    const re = /\bhttps?:\/\/[^\s<>"']+/g;
    let last = 0;
    for (const m of text.matchAll(re)) {
      let url = m[0];
      const trail = url.match(/[.,;:!?)\]]+$/); // keep sentence punctuation outside
      if (trail) url = url.slice(0, -trail[0].length);
      parent.append(text.slice(last, m.index));
      const a = el('a', 'link', url);
      a.href = url;
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      parent.append(a);
      last = m.index + url.length;
    }
    parent.append(text.slice(last));
  }

  // ------------------------------------------------------------------ state

  const state = {
    ws: null,
    phase: 'idle', // idle | connecting | choosing (no nickname yet) | online
    me: null, // our nickname, as the server spells it
    account: false,
    wantNick: null, // the nickname to (re)take
    password: null, // kept in memory only, to log in again after a reconnect
    pendingPassword: null, // from a typed /login or /register, until "registered"
    joining: false, // the join screen is waiting for an answer
    everRegistered: false, // once true, a lost connection is re-established
    stopped: false, // after bye: do not reconnect on our own
    attempt: 0,
    retryTimer: null,
    retryAt: 0,
    restore: null, // {rooms, current, view} to get back after a reconnect
    restoring: null,
    current: null, // the server's current room (plain lines go there)
    view: null, // key of the conversation on screen
    joined: new Map(), // lower(room) -> room name, the rooms we are in
    roomList: [], // [{name, members}] from the last /rooms
    convs: new Map(), // key -> conversation
    members: [], // [{nick, role}] of the current room, from /who and kept current by events
    quitting: false, // a /quit was typed: its bye is ours
    modeQuery: null, // lower(room) whose /mode answer fills the settings dialog
    keys: new Map(), // lower(room) -> the key (+k) it was joined with; in memory only
    needUnread: false, // logged in: ask for the unread counts
    search: null, // {base, page, pending, found, before}: the search its dialog shows
  };

  const roomKey = (name) => `#${lower(name)}`;
  const dmKey = (nick) => `@${lower(nick)}`;
  const isMe = (nick) => state.me !== null && lower(nick) === lower(state.me);
  /** The /join of a room, with the key it was joined with (a +k room lets nobody in without). */
  const joinLine = (room) => {
    const key = state.keys.get(lower(room));
    return key ? `/join ${room} ${key}` : `/join ${room}`;
  };

  /** A conversation: a room or a private chat, with its rendered lines. */
  function conv(kind, name) {
    const key = kind === 'room' ? roomKey(name) : dmKey(name);
    let c = state.convs.get(key);
    if (!c) {
      c = {
        key, kind, name, items: [], ids: new Set(), historyOpen: false, topic: '',
        // Unread messages and mentions of us among them, as badges; the newest id
        // shown, the account's read marker (from the server), and our /read of it.
        unread: 0, mentions: 0, newest: 0, lastRead: 0, seenUpTo: 0, sentRead: 0,
        readAt: 0, readTimer: null,
        // Paging back: the id to ask before, whether the server has older messages
        // (undefined until its first history event), a page being received.
        before: null, more: undefined, loading: null,
        // A room's history on join on its way: {newest shown before it, its oldest id, its line}.
        replay: null,
        dropped: false, // lines were dropped at the top (MAX_ITEMS): older ones are not shown
        capped: null, // the line that says so, once shown
        // A room's moderation, as far as this page has seen it: its modes (from mode
        // events), who is muted (lower(nick)), and kicks whose leave is still to come.
        modes: null, muted: new Set(), kicks: new Set(),
      };
      state.convs.set(key, c);
    } else if (c.name !== name && lower(c.name) === lower(name)) {
      c.name = name; // a later spelling from the server wins
    }
    return c;
  }

  // ---------------------------------------------------------------- the DOM

  const ui = {
    joinScreen: $('join-screen'), joinForm: $('join-form'), nickInput: $('nick-input'),
    passwordInput: $('password-input'), joinButton: $('join-button'), joinError: $('join-error'),
    app: $('app'), rooms: $('rooms'), dms: $('conversations'), noDms: $('no-dms'),
    members: $('members'), membersTitle: $('members-title'), messages: $('messages'),
    title: $('current-title'), topic: $('topic'), status: $('status'), statusText: $('status-text'),
    retry: $('retry-button'), input: $('message-input'), composer: $('composer'),
    leave: $('leave-button'), jump: $('jump-button'), toasts: $('toasts'),
    meNick: $('me-nick'), meDot: $('me-dot'), meAccount: $('me-account'),
    createForm: $('create-room-form'), createInput: $('create-room-input'),
    settings: $('settings-button'), menu: $('member-menu'),
  };

  function toast(text, kind = 'error') {
    const t = el('div', `toast toast--${kind}`, text);
    t.dataset.testid = 'notice';
    ui.toasts.append(t);
    setTimeout(() => t.classList.add('toast--gone'), 6000);
    setTimeout(() => t.remove(), 6500);
  }

  function setStatus(kind, text) {
    ui.status.dataset.state = kind;
    ui.statusText.textContent = text;
    ui.meDot.className = `dot dot--${kind}`;
    ui.retry.hidden = kind === 'online' || kind === 'connecting';
  }

  const nearBottom = () =>
    ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 48;

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.jump.hidden = true;
  }

  /** Add a line to a conversation; on screen it sticks to the bottom unless scrolled up. */
  function addItem(c, node) {
    c.items.push(node);
    const dropped = c.items.length > MAX_ITEMS ? c.items.shift() : null;
    if (dropped) c.dropped = true;
    if (c.key !== state.view) return;
    const stick = nearBottom();
    if (dropped) dropped.remove();
    ui.messages.append(node);
    if (stick) scrollToBottom();
    else ui.jump.hidden = false;
  }

  function systemLine(c, text, ts, extraClass = '') {
    if (!c) return;
    const li = el('li', `sys ${extraClass}`);
    li.dataset.testid = 'event';
    li.append(el('span', 'sys__text', text), timeNode(ts));
    addItem(c, li);
  }

  /**
   * Commands that do nothing useful from this page, or break it, by their name:
   * the page needs JSON (/format), and its WebSocket keeps itself alive (/ping,
   * /pong). The help leaves them out.
   */
  const NOT_HERE = new Set(['/format', '/ping', '/pong']);

  /** The server's list of commands, less those not for this page, as a readable list. */
  function showHelp(c, commands) {
    if (!c) return;
    const li = el('li', 'sys sys--help');
    li.dataset.testid = 'help';
    const box = el('div', 'help');
    const list = el('dl', 'help__list');
    for (const cmd of Array.isArray(commands) ? commands : []) {
      const usage = String(cmd.usage);
      if (NOT_HERE.has(lower(usage.split(' ')[0]))) continue;
      const row = el('div', 'help__row');
      const dt = el('dt', 'help__usage');
      dt.append(el('code', null, usage));
      row.append(dt, el('dd', 'help__text', cmd.help));
      list.append(row);
    }
    box.append(el('p', 'help__title', 'Commands'), list,
      el('p', 'help__foot', 'Anything else is sent to this conversation. ' +
        'Start a line with // to send one that begins with /.'));
    li.append(box);
    addItem(c, li);
  }

  /** Render a room message or a DM. */
  function renderMessage(c, ev) {
    if (ev.history) {
      if (c.replay && c.replay.oldest === null) c.replay.oldest = ev.id;
      if (c.ids.has(ev.id)) return false; // already shown (history after a reconnect)
      if (c.loading) {
        // An older page: shown all at once, above, when its history event comes.
        c.ids.add(ev.id);
        if (ev.id > c.newest) c.newest = ev.id;
        c.loading.events.push(ev);
        return false;
      }
      if (!c.historyOpen) {
        c.historyOpen = true;
        const sep = el('li', 'sep');
        sep.dataset.testid = 'history-separator';
        sep.append(el('span', 'sep__label', 'earlier messages'));
        if (c.replay) c.replay.sep = sep;
        addItem(c, sep);
      }
    }
    c.ids.add(ev.id);
    if (ev.id > c.newest) c.newest = ev.id;
    addItem(c, messageNode(ev, c.items[c.items.length - 1]));
    return true;
  }

  /** The line of a message; it shares the header of `prev`, the line above, when it can. */
  function messageNode(ev, prev) {
    const grouped = !ev.action && prev && prev.classList.contains('msg') &&
      !prev.classList.contains('msg--action') && prev.dataset.from === lower(ev.from) &&
      prev.classList.contains('msg--history') === Boolean(ev.history) &&
      ev.ts - Number(prev.dataset.ts) < GROUP_SECONDS;

    const li = el('li', 'msg');
    li.dataset.testid = 'message';
    li.dataset.id = ev.id;
    li.dataset.from = lower(ev.from);
    li.dataset.ts = ev.ts;
    if (ev.history) { li.classList.add('msg--history'); li.dataset.history = 'true'; }
    if (ev.action) li.classList.add('msg--action');
    if (grouped) li.classList.add('msg--cont');
    if (ev.mention) li.dataset.mention = 'true'; // the server says it mentions us
    if (isMe(ev.from)) li.classList.add('msg--me');
    else if (ev.mention) li.classList.add('msg--mention');
    else if (state.me && new RegExp(`(^|[^\\w.-])${state.me.replace(/\./g, '\\.')}($|[^\\w-])`, 'i').test(ev.text)) {
      li.classList.add('msg--mention');
    }

    // Grouped lines keep their sender in the DOM (for screen readers), hidden visually.
    // An action names its sender in the text, so it shows the time in the gutter instead.
    const side = grouped || ev.action ? timeNode(ev.ts) : avatar(ev.from);
    side.classList.add('msg__side');
    const body = el('div', 'msg__body');
    const meta = el('div', 'msg__meta');
    meta.append(el('span', `msg__from ${hue(ev.from)}`, ev.from), timeNode(ev.ts));
    const text = el('p', 'msg__text');
    if (ev.action) text.append(el('span', 'msg__actor', `${ev.from} `));
    appendLinkified(text, ev.text);
    body.append(meta, text);
    li.append(side, body);
    return li;
  }

  // ------------------------------------------------------- older messages

  /**
   * Change the timeline above what is on screen without moving it: the first
   * line in view stays where it is (the browser's own scroll anchoring is off).
   */
  function keepPlace(change) {
    const box = ui.messages;
    const top = box.getBoundingClientRect().top;
    // The first line in view that is a message or an event (not a marker above them).
    const lines = [...box.children].filter((n) => n.getBoundingClientRect().bottom > top);
    const anchor = lines.find((n) => n.classList.contains('msg') || n.classList.contains('sys')) ||
      lines[0];
    const was = anchor ? anchor.getBoundingClientRect().top : 0;
    change();
    if (anchor && anchor.isConnected) box.scrollTop += anchor.getBoundingClientRect().top - was;
  }

  /** Where older lines go in a conversation: at the top, under its "earlier messages" line. */
  function topIndex(c) {
    const first = c.items[0];
    return first && first.dataset.testid === 'history-separator' ? 1 : 0;
  }

  function insertItems(c, at, nodes) {
    c.items.splice(at, 0, ...nodes);
    if (c.key !== state.view || !nodes.length) return;
    const next = ui.messages.children[at] || null;
    keepPlace(() => { for (const n of nodes) ui.messages.insertBefore(n, next); });
  }

  function removeItem(c, node) {
    const i = c.items.indexOf(node);
    if (i >= 0) c.items.splice(i, 1);
    if (node.isConnected) keepPlace(() => node.remove());
  }

  /**
   * Forget every line above `first` (a history on join that does not reach them):
   * the conversation starts again there, and paging back brings the rest, in order.
   */
  function restartFrom(c, first) {
    const at = c.items.indexOf(first);
    if (at <= 0) return;
    const gone = c.items.splice(0, at);
    c.ids = new Set(c.items.filter((n) => n.dataset.id).map((n) => Number(n.dataset.id)));
    c.dropped = false;
    if (c.key === state.view) keepPlace(() => { for (const n of gone) n.remove(); });
  }

  /** Ask for the page before the oldest message shown, if there is one and none is on its way. */
  function loadOlder() {
    const c = state.convs.get(state.view);
    if (!c || c.loading || c.replay || state.phase !== 'online') return;
    if (c.items.length >= MAX_ITEMS) {
      // The oldest lines would be dropped again: say where the timeline stops, in view
      // (the reader is at the top, looking for more).
      if ((c.more || c.dropped) && !c.items.includes(c.capped)) {
        c.capped = el('li', 'sep sep--start sep--capped');
        c.capped.dataset.testid = 'history-capped';
        c.capped.append(el('span', 'sep__label', `Older messages are not shown: this page keeps ` +
          `the newest ${MAX_ITEMS} lines (chatd connect pages back further with /history)`));
        const at = topIndex(c);
        c.items.splice(at, 0, c.capped);
        ui.messages.insertBefore(c.capped, ui.messages.children[at] || null);
        c.capped.scrollIntoView({ block: 'nearest' });
      }
      return;
    }
    if (!c.more) return;
    if (c.kind === 'room' && !state.joined.has(lower(c.name))) return; // history is for members
    // No `before` yet (a private conversation known from /unread only): its newest page.
    const before = c.before === null ? '' : ` before=${c.before}`;
    if (!send(`/history ${address(c)} ${PAGE}${before}`)) return;
    const marker = el('li', 'loading', 'Loading earlier messages…');
    marker.dataset.testid = 'history-loading';
    marker.setAttribute('role', 'status');
    c.loading = { events: [], marker };
    insertItems(c, topIndex(c), [marker]);
  }

  /** The page asked for has arrived (its history event): put it above, in place. */
  function finishPage(c, ev) {
    const { events, marker } = c.loading;
    c.loading = null;
    c.more = ev.more;
    if (ev.before !== null) c.before = ev.before;
    removeItem(c, marker);
    const nodes = [];
    for (const e of events) nodes.push(messageNode(e, nodes[nodes.length - 1]));
    if (!c.more) {
      const start = el('li', 'sep sep--start');
      start.dataset.testid = 'history-start';
      start.append(el('span', 'sep__label', c.kind === 'room'
        ? `Beginning of #${c.name}` : `Beginning of your messages with ${c.name}`));
      nodes.unshift(start);
    }
    insertItems(c, topIndex(c), nodes);
    fillView();
  }

  /** A timeline too short to scroll cannot be scrolled to its top: load until it can. */
  function fillView() {
    const box = ui.messages;
    if (box.scrollHeight - box.clientHeight < NEAR_TOP) loadOlder();
  }

  /** Forget pages on their way: the connection that would have brought them is gone. */
  function dropPages() {
    for (const c of state.convs.values()) {
      c.replay = null; // nor will a history on join come on it
      if (!c.loading) continue;
      for (const e of c.loading.events) c.ids.delete(e.id);
      removeItem(c, c.loading.marker);
      c.loading = null;
    }
  }

  // ------------------------------------------------ unread, read markers

  /** The page is in front of the user: its tab shown and its window focused. */
  const pageSeen = () => !document.hidden && document.hasFocus();
  /** A conversation is read when it is the one on screen and the page is seen. */
  const seen = (c) => Boolean(c) && c.key === state.view && pageSeen();
  const address = (c) => (c.kind === 'room' ? `#${c.name}` : `@${c.name}`);

  /** A live message of someone else: counted unless it is read as it comes. */
  function bump(c, ev) {
    if (seen(c)) { markRead(c); return; }
    c.unread += 1;
    if (ev.mention || c.kind === 'dm') notify(c, ev);
    if (ev.mention) c.mentions += 1;
    renderSidebar();
  }

  /** A live message came in, on screen or not. */
  function live(c, ev) {
    if (isMe(ev.from)) ownMessage(c, ev);
    else bump(c, ev);
  }

  /** Our own message (from here or another session): the server marks all before it read. */
  function ownMessage(c, ev) {
    if (ev.id > c.lastRead) c.lastRead = ev.id;
    if (ev.id > c.sentRead) c.sentRead = ev.id;
    if (!c.unread && !c.mentions) return;
    c.unread = 0;
    c.mentions = 0;
    renderSidebar();
  }

  /** The conversation on screen was seen: nothing unread, and the marker follows. */
  function readView() {
    const c = state.convs.get(state.view);
    if (!seen(c)) return;
    if (c.unread || c.mentions) {
      c.unread = 0;
      c.mentions = 0;
      renderSidebar();
    }
    markRead(c);
  }

  /**
   * Move the account's read marker of `c` up to the newest message shown: one
   * /read once a burst has settled, at most one a second, only forward.
   */
  function markRead(c) {
    if (!state.account) return; // guests have no markers
    if (c.newest > c.seenUpTo) c.seenUpTo = c.newest;
    if (c.readTimer || c.seenUpTo <= Math.max(c.lastRead, c.sentRead)) return;
    const wait = Math.max(READ_SETTLE, c.readAt + READ_EVERY - Date.now());
    c.readTimer = setTimeout(() => {
      c.readTimer = null;
      const id = c.seenUpTo;
      if (!state.account || state.convs.get(c.key) !== c) return;
      if (id <= Math.max(c.lastRead, c.sentRead)) return;
      if (c.kind === 'room' && !state.joined.has(lower(c.name))) return;
      if (send(`/read ${address(c)} ${id}`)) {
        c.sentRead = id;
        c.readAt = Date.now();
      }
    }, wait);
  }

  /** The conversation of a read or unread entry, if this page has (or should have) it. */
  function markerConv(entry, create) {
    if (entry.peer) {
      if (!create && !state.convs.has(dmKey(entry.peer))) return null;
      return conv('dm', entry.peer);
    }
    if (!entry.room) return null;
    if (!create && !state.convs.has(roomKey(entry.room))) return null;
    return conv('room', entry.room);
  }

  /** The answer to /unread: the server's counts replace ours. */
  function onUnread(ev) {
    const listed = new Set();
    for (const u of entries(ev.conversations)) {
      const fresh = u.peer && !state.convs.has(dmKey(u.peer));
      const c = markerConv(u, true);
      if (!c) continue;
      listed.add(c.key);
      if (Number.isInteger(u.last_read) && u.last_read > c.lastRead) c.lastRead = u.last_read;
      c.unread = Number.isInteger(u.unread) ? u.unread : 0;
      c.mentions = Number.isInteger(u.mentions) ? u.mentions : 0;
      if (fresh) {
        // Known from here only: its messages are in the account's history, loaded when opened.
        c.more = true;
        c.before = null;
      }
    }
    for (const c of state.convs.values()) {
      if (!listed.has(c.key)) { c.unread = 0; c.mentions = 0; } // nothing unread there
    }
    renderSidebar();
    readView();
  }

  /**
   * A session of the account (this one or another) moved a marker: what this page
   * counts as unread there is at most the messages after it that it knows of.
   */
  function onRead(ev) {
    const c = markerConv(ev, false);
    if (!c || !Number.isInteger(ev.id)) return;
    if (ev.id > c.lastRead) c.lastRead = ev.id;
    if (c.lastRead >= c.newest) {
      c.unread = 0;
      c.mentions = 0;
    } else {
      let unread = 0;
      let mentions = 0;
      for (const n of c.items) {
        if (!n.classList.contains('msg') || Number(n.dataset.id) <= c.lastRead) continue;
        if (state.me && n.dataset.from === lower(state.me)) continue;
        unread += 1;
        if (n.dataset.mention) mentions += 1;
      }
      c.unread = Math.min(c.unread, unread);
      c.mentions = Math.min(c.mentions, mentions);
    }
    renderSidebar();
  }

  function badge(n, kind = '') {
    const b = el('span', kind ? `badge badge--${kind}` : 'badge', n > 99 ? '99+' : n);
    b.dataset.testid = 'unread';
    b.setAttribute('aria-label', `${n} unread`);
    return b;
  }

  function mentionBadge(n) {
    const b = el('span', 'badge badge--mention', `@${n > 99 ? '99+' : n}`);
    b.dataset.testid = 'mentions';
    b.title = `${n} mention${n === 1 ? '' : 's'} of you`;
    b.setAttribute('aria-label', b.title);
    return b;
  }

  // --------------------------------------------------------- notifications

  const notifications = typeof Notification === 'function' && window.isSecureContext;
  const notifyButton = $('notify-button');

  /** The "Enable notifications" control: shown while the browser has not been asked. */
  function syncNotifyButton() {
    notifyButton.hidden = !notifications || Notification.permission !== 'default';
  }

  notifyButton.addEventListener('click', () => {
    // Asked on a click only: browsers ignore (or punish) a request made on load.
    let answered = false;
    const asked = Notification.requestPermission((p) => done(p)); // old Safari: a callback
    if (asked && typeof asked.then === 'function') asked.then(done, () => done('default'));
    function done(permission) {
      if (answered) return; // browsers that both call back and resolve
      answered = true;
      syncNotifyButton();
      if (permission === 'denied') {
        toast('Notifications are blocked for this site in the browser settings.', 'info');
      } else if (permission === 'granted') {
        toast('Notifications on: mentions and private messages, while this page is in the background.', 'info');
      }
    }
  });

  /** A mention or a private message while the page is not in front: a notification. */
  function notify(c, ev) {
    if (!notifications || Notification.permission !== 'granted' || pageSeen()) return;
    const title = c.kind === 'dm' ? `${ev.from} (private message)` : `${ev.from} in #${ev.room}`;
    const text = ev.action ? `* ${ev.from} ${ev.text}` : ev.text;
    let n;
    try {
      // One per conversation (the tag): a newer one replaces it, in every tab of the page.
      n = new Notification(title, {
        body: text.length > 200 ? `${text.slice(0, 199)}…` : text, tag: c.key, icon: '/icon.svg',
      });
    } catch {
      return; // a browser that only notifies from a service worker
    }
    const key = c.key;
    n.addEventListener('click', () => {
      window.focus();
      n.close();
      openConv(key);
    });
  }

  /** Bring a conversation on screen: a room through the server (it becomes current). */
  function openConv(key) {
    const c = state.convs.get(key);
    if (!c) return;
    closeDrawers();
    if (c.kind === 'dm') showView(key);
    else if (state.joined.has(lower(c.name))) send(joinLine(c.name));
  }

  /** A room's member count: a person and a number, quiet, unlike the unread badge. */
  function memberCount(n) {
    const label = `${n} member${n === 1 ? '' : 's'}`;
    const span = el('span', 'item__members');
    span.dataset.testid = 'member-count';
    span.title = label;
    span.setAttribute('aria-label', label);
    span.setAttribute('role', 'img');
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 16 16');
    svg.setAttribute('aria-hidden', 'true');
    const head = document.createElementNS(SVG_NS, 'circle');
    head.setAttribute('cx', '8');
    head.setAttribute('cy', '5');
    head.setAttribute('r', '3');
    const body = document.createElementNS(SVG_NS, 'path');
    body.setAttribute('d', 'M2.5 14.5c.6-3 2.7-4.5 5.5-4.5s4.9 1.5 5.5 4.5');
    svg.append(head, body);
    span.append(svg, el('span', 'item__members-n', n));
    return span;
  }

  function renderSidebar() {
    // Rooms: every room the server listed, plus any we are in that it did not list yet.
    const rooms = new Map(state.roomList.map((r) => [lower(r.name), r]));
    for (const [k, name] of state.joined) if (!rooms.has(k)) rooms.set(k, { name, members: null });
    const roomItems = [...rooms.values()].sort((a, b) => lower(a.name).localeCompare(lower(b.name)));
    ui.rooms.replaceChildren(...roomItems.map((r) => {
      const c = state.convs.get(roomKey(r.name));
      const b = el('button', 'item');
      b.type = 'button';
      b.dataset.testid = 'room';
      b.dataset.room = r.name;
      if (state.joined.has(lower(r.name))) b.classList.add('item--joined');
      if (roomKey(r.name) === state.view) { b.classList.add('item--active'); b.setAttribute('aria-current', 'page'); }
      if (c && c.unread) b.classList.add('item--unread');
      b.append(el('span', 'item__sigil', '#'), el('span', 'item__name', r.name));
      if (c && c.mentions) b.append(mentionBadge(c.mentions));
      if (c && c.unread) b.append(badge(c.unread));
      if (r.members !== null) b.append(memberCount(r.members));
      b.title = state.joined.has(lower(r.name)) ? `#${r.name}` : `Join #${r.name}`;
      b.addEventListener('click', () => { closeDrawers(); send(joinLine(r.name)); });
      const li = el('li');
      li.append(b);
      return li;
    }));

    const dms = [...state.convs.values()].filter((c) => c.kind === 'dm');
    ui.noDms.hidden = dms.length > 0;
    ui.dms.replaceChildren(...dms.map((c) => {
      const b = el('button', 'item');
      b.type = 'button';
      b.dataset.testid = 'dm';
      b.dataset.peer = c.name;
      if (c.key === state.view) { b.classList.add('item--active'); b.setAttribute('aria-current', 'page'); }
      if (c.unread) b.classList.add('item--unread');
      b.append(avatar(c.name), el('span', 'item__name', c.name));
      // Every private message is for us: its count looks like a mention's.
      if (c.unread) b.append(badge(c.unread, 'direct'));
      b.addEventListener('click', () => { closeDrawers(); showView(c.key); });
      const li = el('li');
      li.append(b);
      return li;
    }));

    const unread = [...state.convs.values()].reduce((n, c) => n + c.unread, 0);
    const direct = [...state.convs.values()].reduce((n, c) => n + c.mentions +
      (c.kind === 'dm' ? c.unread : 0), 0);
    document.title = unread ? `(${unread}${direct ? ` · @${direct}` : ''}) chatd` : 'chatd';
  }

  function renderMembers() {
    const menuWas = menuFor && menuFor.dataset.menu; // a menu open on a member stays open
    ui.membersTitle.textContent = state.current ? `Members · ${state.members.length}` : 'Members';
    const room = state.current ? state.convs.get(roomKey(state.current)) : null;
    const mine = rank(myRole());
    // Owners first, then ops, voiced members and the rest, each in the server's order.
    const members = state.members.map((m, i) => [m, i])
      .sort(([a, i], [b, j]) => rank(b.role) - rank(a.role) || i - j)
      .map(([m]) => m);
    ui.members.replaceChildren(...members.map(({ nick, role }) => {
      const b = el('button', 'item');
      b.type = 'button';
      b.dataset.testid = 'member';
      b.dataset.nick = nick;
      b.dataset.role = role;
      b.append(avatar(nick));
      if (PREFIX[role]) {
        const sigil = el('span', `item__role item__role--${role}`, PREFIX[role]);
        sigil.dataset.testid = 'member-role';
        sigil.title = role;
        sigil.setAttribute('aria-hidden', 'true');
        b.append(sigil);
      }
      b.append(el('span', 'item__name', nick));
      if (PREFIX[role]) b.append(el('span', 'sr-only', `, ${role}`));
      const muted = room && room.muted.has(lower(nick));
      if (muted) b.append(el('span', 'item__tag item__tag--muted', 'muted'));
      if (isMe(nick)) {
        b.append(el('span', 'item__tag', 'you'));
        b.disabled = true;
      } else {
        b.title = `Message ${nick} privately`;
        b.addEventListener('click', () => { closeDrawers(); openDm(nick); });
      }
      const li = el('li', 'member');
      li.append(b);
      // An op's actions on someone of a lower role (the server decides in the end).
      if (!isMe(nick) && mine >= RANK.op && mine > rank(role)) {
        const more = el('button', 'icon-button member__more', '\u22ef');
        more.type = 'button';
        more.dataset.testid = 'member-actions';
        more.dataset.nick = nick;
        more.dataset.menu = `${lower(nick)} ${role} ${Boolean(muted)}`;
        more.title = `Moderate ${nick}`;
        more.setAttribute('aria-label', `Moderate ${nick}`);
        more.setAttribute('aria-haspopup', 'menu');
        more.setAttribute('aria-expanded', 'false');
        more.addEventListener('click', () => openMenu(more, nick, role, Boolean(muted)));
        li.append(more);
      }
      return li;
    }));
    ui.settings.hidden = !state.current || mine < RANK.op;
    if (menuWas) {
      // The same member, with the same role: the menu (and the focus in it) stays.
      const same = [...ui.members.querySelectorAll('[data-testid=member-actions]')]
        .find((b) => b.dataset.menu === menuWas);
      if (same) {
        menuFor = same;
        same.setAttribute('aria-expanded', 'true');
      } else {
        closeMenu(ui.menu.contains(document.activeElement));
      }
    }
  }

  function renderHeader() {
    const c = state.convs.get(state.view);
    ui.title.replaceChildren();
    if (!c) {
      ui.title.textContent = 'No room';
      ui.topic.textContent = 'You are in no room: pick one on the left, or create one.';
      ui.leave.hidden = true;
    } else {
      ui.title.append(el('span', 'chat__sigil', c.kind === 'room' ? '#' : '@'), c.name);
      ui.topic.textContent = c.kind === 'room'
        ? (c.topic || 'No topic. Set one with /topic TEXT')
        : `Private conversation with ${c.name}`;
      ui.leave.hidden = false;
      ui.leave.textContent = c.kind === 'room' ? 'Leave' : 'Close';
      ui.leave.title = c.kind === 'room' ? `Leave #${c.name}` : 'Close this conversation';
    }
    ui.input.placeholder = !c ? 'Type /join ROOM' : c.kind === 'room' ? `Message #${c.name}` : `Message ${c.name}`;
    ui.meNick.textContent = state.me || '';
    ui.meAccount.hidden = !state.account;
  }

  function showView(key) {
    state.view = state.convs.has(key) ? key : null;
    const c = state.convs.get(state.view);
    if (seen(c)) { c.unread = 0; c.mentions = 0; markRead(c); }
    ui.messages.replaceChildren(...(c ? c.items : []));
    scrollToBottom();
    renderHeader();
    renderSidebar();
    if (c) fillView();
  }

  function openDm(nick) {
    const fresh = !state.convs.has(dmKey(nick));
    const c = conv('dm', nick);
    // Accounts can read their private history back.
    if (fresh && state.account) send(`/history @${nick}`);
    showView(c.key);
    ui.input.focus();
  }

  // ------------------------------------------------------------ moderation

  // Roles in a room, lowest first; the member list shows them as IRC does.
  const RANK = { member: 0, voice: 1, op: 2, owner: 3 };
  const PREFIX = { owner: '~', op: '@', voice: '+' };
  const rank = (role) => RANK[role] || 0;
  const roleOf = (nick) => {
    const m = state.members.find((x) => lower(x.nick) === lower(nick));
    return m ? m.role : 'member';
  };
  const myRole = () => (state.me ? roleOf(state.me) : 'member');
  const isCurrent = (room) => state.current !== null && lower(room) === lower(state.current);
  /** A room's conversation for a line about it; the one on screen if we have none for it. */
  const roomConv = (room) => state.convs.get(roomKey(room)) || state.convs.get(state.view);
  /** A ban mask as people write it: the bare name for a nick or an account. */
  const maskText = (mask) => String(mask).replace(/^(nick|account):/, '');
  const ROLE_WORDS = {
    owner: 'the owner', op: 'an op', voice: 'a voiced member', member: 'a regular member',
  };

  /** 3600 -> "1h": the shortest exact form, as the server writes durations. */
  function durationText(seconds) {
    for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60]]) {
      if (seconds % size === 0) return `${seconds / size}${unit}`;
    }
    return `${seconds}s`;
  }
  const forHow = (duration) => (Number.isInteger(duration) && duration > 0 ? ` for ${durationText(duration)}` : '');
  const because = (reason) => (reason ? ` (${reason})` : '');

  /** Change one member's role in the list on screen (the next /who confirms it). */
  function setMember(nick, role) {
    const m = state.members.find((x) => lower(x.nick) === lower(nick));
    if (m) m.role = role;
    else state.members.push({ nick, role });
    renderMembers();
  }

  function dropMember(nick) {
    state.members = state.members.filter((x) => lower(x.nick) !== lower(nick));
    renderMembers();
  }

  /** What the mode letters of a change mean, for the line in the timeline. */
  const MODE_WORDS = {
    i: ['invite only', 'open to all'],
    k: ['a key to join', 'no key'],
    l: ['a member limit', 'no member limit'],
    m: ['moderated', 'not moderated'],
    s: ['secret', 'listed'],
    t: ['only ops change the topic', 'anyone changes the topic'],
  };
  function modeWords(change) {
    const words = [];
    let sign = '+';
    for (const ch of String(change)) {
      if (ch === '+' || ch === '-') sign = ch;
      else if (MODE_WORDS[ch]) words.push(MODE_WORDS[ch][sign === '+' ? 0 : 1]);
    }
    return words.join(', ');
  }

  /** The modes object of a mode event as IRC writes it: "+ikl". */
  function modeFlags(modes) {
    const on = [['i', modes.i], ['k', modes.k !== null], ['l', modes.l !== null],
      ['m', modes.m], ['s', modes.s], ['t', modes.t]].filter(([, v]) => v).map(([f]) => f);
    return on.length ? `+${on.join('')}` : 'none';
  }

  /** A heading and one row per entry: the answer to /bans, /klines or /modlog. */
  function listBox(c, title, rows, empty, testid) {
    if (!c) return;
    const li = el('li', 'sys sys--help');
    li.dataset.testid = testid;
    const box = el('div', 'help');
    box.append(el('p', 'help__title', title));
    if (!rows.length) box.append(el('p', 'help__foot', empty));
    else {
      const list = el('ul', 'modlist');
      for (const row of rows) list.append(el('li', 'modlist__row', row));
      box.append(list);
    }
    li.append(box);
    addItem(c, li);
  }

  const stamp = (ts) => {
    if (typeof ts !== 'number' || !Number.isFinite(ts)) return '';
    const d = new Date(ts * 1000);
    if (Number.isNaN(d.getTime())) return '';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  };
  const entries = (list) => (Array.isArray(list) ? list.filter((e) => e && typeof e === 'object') : []);
  const banRow = (b) => `${maskText(b.mask)} by ${b.by || 'server'}` +
    (b.until ? ` until ${stamp(b.until)}` : '') + because(b.reason);

  /** A moderation event: a line in its room (or on screen), and the lists kept current. */
  function onModeration(ev) {
    switch (ev.type) {
      case 'kick': {
        const c = conv('room', ev.room);
        c.kicks.add(lower(ev.nick)); // its leave follows: this line says it
        if (isMe(ev.nick)) {
          systemLine(c, `${ev.by} kicked you from #${ev.room}${because(ev.reason)}`, null, 'sys--mod');
          toast(`${ev.by} kicked you from #${ev.room}${because(ev.reason)}`, 'info');
        } else {
          systemLine(c, `${ev.by} kicked ${ev.nick}${because(ev.reason)}`, null, 'sys--mod');
        }
        break;
      }
      case 'mode': {
        const c = conv('room', ev.room);
        if (ev.modes && typeof ev.modes === 'object') c.modes = ev.modes;
        if (ev.by) {
          const words = modeWords(ev.change);
          systemLine(c, `${ev.by} set ${ev.change}${words ? ` (${words})` : ''}`, null, 'sys--mod');
        } else if (state.modeQuery === lower(ev.room)) {
          state.modeQuery = null; // asked for by the settings dialog: it shows them
          fillSettings(c.modes);
        } else if (c.modes) {
          const owner = ev.owner ? `; owner ${ev.owner}` : '';
          systemLine(roomConv(ev.room), `Modes of #${ev.room}: ${modeFlags(c.modes)}${owner}`);
        }
        break;
      }
      case 'role': {
        const words = ROLE_WORDS[ev.role] || ev.role;
        const text = isMe(ev.nick)
          ? (ev.by ? `${ev.by} made you ${words}` : `You are now ${words}`)
          : (ev.by ? `${ev.by} made ${ev.nick} ${words}` : `${ev.nick} is now ${words}`);
        systemLine(conv('room', ev.room), text, null, 'sys--mod');
        if (isCurrent(ev.room)) setMember(ev.nick, RANK[ev.role] !== undefined ? ev.role : 'member');
        break;
      }
      case 'ban':
        systemLine(roomConv(ev.room), `${ev.by} banned ${maskText(ev.mask)}` +
          `${forHow(ev.duration)}${because(ev.reason)}`, null, 'sys--mod');
        break;
      case 'unban':
        systemLine(roomConv(ev.room), ev.by ? `${ev.by} lifted the ban on ${maskText(ev.mask)}`
          : `The ban on ${maskText(ev.mask)} expired`, null, 'sys--mod');
        break;
      case 'bans':
        listBox(roomConv(ev.room), `Bans of #${ev.room}`, entries(ev.bans).map(banRow),
          'No bans.', 'bans');
        break;
      case 'mute': {
        const c = conv('room', ev.room);
        c.muted.add(lower(ev.nick));
        const who = isMe(ev.nick) ? 'you' : ev.nick;
        systemLine(c, `${ev.by} muted ${who}${forHow(ev.duration)}`, null, 'sys--mod');
        if (isCurrent(ev.room)) renderMembers();
        break;
      }
      case 'unmute': {
        const c = conv('room', ev.room);
        c.muted.delete(lower(ev.nick));
        const who = isMe(ev.nick) ? 'you' : ev.nick;
        systemLine(c, ev.by ? `${ev.by} unmuted ${who}`
          : `${isMe(ev.nick) ? 'You' : ev.nick} may speak again`, null, 'sys--mod');
        if (isCurrent(ev.room)) renderMembers();
        break;
      }
      case 'invite': inviteLine(ev); break;
      case 'invited':
        systemLine(state.convs.get(state.view), `You invited ${ev.nick} to #${ev.room}`, null, 'sys--mod');
        break;
      case 'wall':
        systemLine(state.convs.get(state.view), `Notice from ${ev.from}: ${ev.text}`, null, 'sys--notice');
        toast(`Notice from ${ev.from}: ${ev.text}`, 'info');
        break;
      case 'modlog':
        listBox(roomConv(ev.room), `Moderation log of #${ev.room}`, entries(ev.entries).map((e) =>
          [stamp(e.ts), e.by || 'server', e.action, e.target && maskText(e.target), e.detail]
            .filter((x) => x).join(' ')),
        'Nothing yet.', 'modlog');
        break;
      case 'kline':
        systemLine(state.convs.get(state.view), `${ev.by} banned ${maskText(ev.mask)} from the ` +
          `server${forHow(ev.duration)}${because(ev.reason)}`, null, 'sys--mod');
        break;
      case 'unkline':
        systemLine(state.convs.get(state.view), ev.by
          ? `${ev.by} lifted the server ban on ${maskText(ev.mask)}`
          : `The server ban on ${maskText(ev.mask)} expired`, null, 'sys--mod');
        break;
      case 'klines':
        listBox(state.convs.get(state.view), 'Server bans', entries(ev.klines).map(banRow),
          'No server bans.', 'klines');
        break;
      case 'kill':
        systemLine(state.convs.get(state.view), `${ev.by} disconnected ${ev.nick}${because(ev.reason)}`,
          null, 'sys--mod');
        break;
      default: break;
    }
  }

  /** An invitation: a line with a button that takes it. */
  function inviteLine(ev) {
    const c = state.convs.get(state.view);
    toast(`${ev.from} invites you to #${ev.room}`, 'info');
    if (!c) return;
    const li = el('li', 'sys sys--mod');
    li.dataset.testid = 'event';
    const take = el('button', 'button button--small', `Join #${ev.room}`);
    take.type = 'button';
    take.dataset.testid = 'accept-invite';
    take.addEventListener('click', () => send(`/join ${ev.room}`));
    li.append(el('span', 'sys__text', `${ev.from} invites you to #${ev.room}`), take, timeNode());
    addItem(c, li);
  }

  // The menu of a member: real buttons, arrow keys move between them, Escape closes.
  let menuFor = null; // the button that opened it

  function menuItem(label, action) {
    const b = el('button', 'menu__item', label);
    b.type = 'button';
    b.setAttribute('role', 'menuitem');
    b.tabIndex = -1;
    b.dataset.testid = 'member-action';
    b.dataset.action = action;
    return b;
  }

  function openMenu(trigger, nick, role, muted) {
    if (menuFor === trigger) { closeMenu(true); return; }
    closeMenu(false);
    const mine = rank(myRole());
    const items = [];
    if (role === 'op') items.push(['Remove op', 'deop', () => send(`/deop ${nick}`)]);
    else if (mine >= RANK.op) items.push(['Make op', 'op', () => send(`/op ${nick}`)]);
    if (role === 'voice') items.push(['Take voice', 'devoice', () => send(`/devoice ${nick}`)]);
    else if (role === 'member') items.push(['Give voice', 'voice', () => send(`/voice ${nick}`)]);
    if (muted) items.push(['Unmute', 'unmute', () => send(`/unmute ${nick}`)]);
    else items.push(['Mute…', 'mute', () => askAction('mute', nick)]);
    items.push(['Kick…', 'kick', () => askAction('kick', nick)]);
    items.push(['Ban…', 'ban', () => askAction('ban', nick)]);
    ui.menu.replaceChildren(...items.map(([label, action, run]) => {
      const b = menuItem(label, action);
      b.addEventListener('click', () => { closeMenu(true); run(); });
      return b;
    }));
    ui.menu.setAttribute('aria-label', `Moderate ${nick}`);
    ui.menu.hidden = false;
    menuFor = trigger;
    trigger.setAttribute('aria-expanded', 'true');
    // Below the button, kept on screen.
    const at = trigger.getBoundingClientRect();
    const box = ui.menu.getBoundingClientRect();
    ui.menu.style.top = `${Math.max(8, Math.min(at.bottom + 4, innerHeight - box.height - 8))}px`;
    ui.menu.style.left = `${Math.max(8, Math.min(at.right - box.width, innerWidth - box.width - 8))}px`;
    ui.menu.firstElementChild.focus();
  }

  /** Close the member menu; `refocus` gives the focus back to the button that opened it. */
  function closeMenu(refocus) {
    if (!menuFor) return;
    const trigger = menuFor;
    menuFor = null;
    ui.menu.hidden = true;
    ui.menu.replaceChildren();
    trigger.setAttribute('aria-expanded', 'false');
    if (!refocus) return;
    if (trigger.isConnected) trigger.focus();
    else ui.members.querySelector('button:not(:disabled)')?.focus(); // the member went
  }

  ui.menu.addEventListener('keydown', (e) => {
    const items = [...ui.menu.querySelectorAll('[role=menuitem]')];
    const at = items.indexOf(document.activeElement);
    const move = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: items.length - 1 }[e.key];
    if (move !== undefined) {
      e.preventDefault();
      items[(move + items.length) % items.length].focus();
    } else if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation(); // the menu closes, not the drawer under it
      closeMenu(true);
    } else if (e.key === 'Tab') {
      closeMenu(false);
    }
  });
  document.addEventListener('pointerdown', (e) => {
    if (menuFor && !ui.menu.contains(e.target) && e.target !== menuFor) closeMenu(false);
  });

  // Kick, ban, mute: one dialog asks for the reason and the duration.
  const actionDialog = $('action-dialog');
  const actionForm = $('action-form');
  const ACTIONS = {
    kick: { title: 'Kick', lead: 'removes them from the room; they can come back.', duration: false, reason: true },
    ban: { title: 'Ban', lead: 'removes them from the room and keeps them out.', duration: true, reason: true },
    mute: { title: 'Mute', lead: 'keeps them in the room, silent.', duration: true, reason: false },
  };
  let pendingAction = null; // {kind, nick, room}

  function askAction(kind, nick) {
    const a = ACTIONS[kind];
    pendingAction = { kind, nick, room: state.current };
    $('action-title').textContent = `${a.title} ${nick}`;
    $('action-lead').textContent = `${a.title} ${nick} from #${state.current}: ${a.lead}`;
    $('action-duration-field').hidden = !a.duration;
    $('action-reason-field').hidden = !a.reason;
    $('action-duration').value = '';
    $('action-reason').value = '';
    $('action-confirm').textContent = a.title;
    actionDialog.showModal();
    (a.reason ? $('action-reason') : $('action-duration')).focus();
  }

  actionForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const p = pendingAction;
    pendingAction = null;
    actionDialog.close();
    // The member list (and so the action) was for the current room: act only if it still is.
    if (!p || !state.current || lower(p.room) !== lower(state.current)) return;
    const duration = ACTIONS[p.kind].duration ? $('action-duration').value : '';
    const reason = ACTIONS[p.kind].reason ? $('action-reason').value.replace(/\s+/g, ' ').trim() : '';
    send([`/${p.kind}`, p.nick, duration, reason].filter((x) => x).join(' '));
  });

  // The room's settings: its modes, read with /mode and changed with one /mode.
  const settingsDialog = $('settings-dialog');
  const settingsForm = $('settings-form');
  const modeBox = (f) => $(`mode-${f}`);
  let settingsRoom = null;
  let settingsFrom = null; // the modes the form was filled from

  function showSettingsError(text) {
    $('settings-error').textContent = text;
    $('settings-error').hidden = !text;
  }

  function fillSettings(modes) {
    if (!settingsDialog.open || !modes) return;
    settingsFrom = modes;
    for (const f of ['i', 'm', 's', 't']) modeBox(f).checked = modes[f] === true;
    modeBox('k').value = typeof modes.k === 'string' ? modes.k : '';
    modeBox('l').value = Number.isInteger(modes.l) ? String(modes.l) : '';
    $('settings-lead').textContent = `Modes of #${settingsRoom} now: ${modeFlags(modes)}`;
    $('settings-save').disabled = false;
  }

  ui.settings.addEventListener('click', () => {
    if (!state.current) return;
    settingsRoom = state.current;
    settingsFrom = null;
    showSettingsError('');
    $('settings-lead').textContent = `Modes of #${settingsRoom}: loading…`;
    $('settings-save').disabled = true;
    settingsDialog.showModal();
    modeBox('i').focus();
    state.modeQuery = lower(settingsRoom);
    send(`/mode ${settingsRoom}`);
  });

  /** The /mode changes from what the form was filled with to what it says now. */
  function modeChanges(from) {
    const words = [];
    for (const f of ['i', 'm', 's', 't']) {
      if (modeBox(f).checked !== (from[f] === true)) words.push(`${modeBox(f).checked ? '+' : '-'}${f}`);
    }
    const key = modeBox('k').value.trim();
    const oldKey = typeof from.k === 'string' ? from.k : '';
    if (key !== oldKey) {
      if (key && !/^(?!:)[!-+\--~]{1,32}$/.test(key)) throw new Error('A key is 1 to 32 characters, without spaces or commas, not starting with a colon.');
      words.push(key ? `+k ${key}` : '-k');
    }
    const limit = modeBox('l').value.trim();
    const oldLimit = Number.isInteger(from.l) ? String(from.l) : '';
    if (limit !== oldLimit) {
      const n = Number(limit);
      if (limit && !(Number.isInteger(n) && n >= 1 && n <= 1000000)) {
        throw new Error('A member limit is a whole number from 1 to 1000000.');
      }
      words.push(limit ? `+l ${n}` : '-l');
    }
    return words;
  }

  settingsForm.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!settingsFrom) return;
    let words;
    try { words = modeChanges(settingsFrom); } catch (err) { showSettingsError(err.message); return; }
    settingsDialog.close();
    if (!words.length) return;
    const key = modeBox('k').value.trim();
    if (key) state.keys.set(lower(settingsRoom), key);
    send(`/mode ${settingsRoom} ${words.join(' ')}`);
  });
  // Search: /search, its results (messages marked "search") listed in a dialog.
  const searchDialog = $('search-dialog');
  const searchInput = $('search-input');
  const searchHere = $('search-here');
  const searchStatus = $('search-status');
  const searchResults = $('search-results');
  const searchMore = $('search-more');
  const SEARCH_ERRORS = new Set(['bad_query', 'bad_args', 'bad_room', 'bad_nick', 'not_in_room',
    'not_logged_in', 'storage_unavailable']);

  function openSearch() {
    const c = state.convs.get(state.view);
    searchHere.disabled = !c;
    if (!c) searchHere.checked = false;
    $('search-here-label').textContent = c ? `Only in ${address(c)}` : 'Only in this conversation';
    if (!searchDialog.open) searchDialog.showModal();
    searchInput.focus();
    searchInput.select();
  }

  /** Send /search BASE (a scope and the text), or its next page; results replace the list. */
  function startSearch(base, before = null) {
    const more = before !== null && state.search;
    state.search = { base, page: [], pending: true, found: more ? state.search.found : 0, before: null };
    searchStatus.textContent = 'Searching…';
    searchMore.hidden = true;
    if (!more) searchResults.replaceChildren();
    if (!send(`/search ${base}${more ? ` before=${before}` : ''}`)) {
      state.search.pending = false;
      searchStatus.textContent = 'Not connected.';
    }
  }

  /** A /search typed in the message box: its results go to the dialog too. */
  function typedSearch(line) {
    const args = line.replace(/^\/search\s+/i, '').trim();
    // Its pages go on without the page size and the place it started from.
    const base = args.replace(/\s+before=\d+(?=\s|$)/gi, '').replace(/\s+\d+$/, '');
    searchInput.value = base;
    searchHere.checked = false;
    searchResults.replaceChildren();
    state.search = { base, page: [], pending: true, found: 0, before: null };
    searchStatus.textContent = 'Searching…';
    searchMore.hidden = true;
    openSearch();
  }

  function onSearchResult(ev) {
    if (!state.search || !state.search.pending) {
      state.search = { base: null, page: [], pending: true, found: 0, before: null };
      searchResults.replaceChildren();
    }
    state.search.page.push(ev);
  }

  function onSearchEnd(ev) {
    if (!state.search) state.search = { base: null, page: [], found: 0 };
    const s = state.search;
    s.pending = false;
    searchResults.append(...s.page.map(resultNode));
    s.page = [];
    s.found += Number.isInteger(ev.count) ? ev.count : 0;
    s.before = ev.before;
    searchStatus.textContent = (s.found ? `${s.found} found` : 'Nothing found') +
      (ev.cut ? ' (the search took too long and stopped early: older matches may be missing)' : '');
    searchMore.hidden = !(ev.more && ev.before !== null && s.base !== null);
    if (!searchDialog.open) openSearch();
  }

  /** One result: where, who, when and the text; a click goes to its conversation. */
  function resultNode(ev) {
    const dm = ev.type === 'dm';
    const peer = dm ? (isMe(ev.from) ? ev.to : ev.from) : null;
    const li = el('li', 'result');
    li.dataset.testid = 'search-result';
    li.dataset.id = ev.id;
    const b = el('button', 'result__button');
    b.type = 'button';
    const meta = el('span', 'result__meta');
    meta.append(el('span', 'result__where', dm ? `@${peer}` : `#${ev.room}`),
      el('span', `result__from ${hue(ev.from)}`, ev.from), el('span', 'result__time', stamp(ev.ts)));
    b.append(meta, el('span', 'result__text', ev.action ? `* ${ev.from} ${ev.text}` : ev.text));
    b.title = dm ? `Open your conversation with ${peer}` : `Go to #${ev.room}`;
    b.addEventListener('click', () => {
      searchDialog.close();
      closeDrawers();
      if (dm) openDm(peer);
      else send(joinLine(ev.room));
    });
    li.append(b);
    return li;
  }

  $('search-button').addEventListener('click', openSearch);
  $('search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    let text = searchInput.value.replace(/\s+/g, ' ').trim();
    if (!text) return;
    const c = state.convs.get(state.view);
    const scope = searchHere.checked && c ? `${address(c)} ` : '';
    // Literal words: a first word with # or @ would name a conversation, a last one of digits N.
    if (!scope) text = text.replace(/^([#@]\S*)/, '"$1"');
    text = text.replace(/(^|\s)(\d+)$/, '$1"$2"');
    startSearch(scope + text);
  });
  searchMore.addEventListener('click', () => {
    const s = state.search;
    if (s && s.base !== null && s.before !== null) startSearch(s.base, s.before);
  });

  for (const d of [actionDialog, settingsDialog, searchDialog]) {
    for (const b of d.querySelectorAll('[data-close]')) b.addEventListener('click', () => d.close());
    // A click on the backdrop (outside the card) closes it too.
    d.addEventListener('click', (e) => { if (e.target === d) d.close(); });
  }

  // ------------------------------------------------------------ the socket

  // Lines out are paced (a burst of 20, then 8 a second): a long paste is
  // slowed down here rather than cut by the server's flood control.
  const outbox = [];
  let tokens = 20;
  let refilled = Date.now();
  let pumpTimer = null;

  const connected = () => state.ws !== null && state.ws.readyState === WebSocket.OPEN;

  function send(line) {
    if (!connected()) return false;
    outbox.push(line);
    pump();
    return true;
  }

  function pump() {
    const now = Date.now();
    tokens = Math.min(20, tokens + ((now - refilled) / 1000) * 8);
    refilled = now;
    while (outbox.length && tokens >= 1 && connected()) {
      state.ws.send(outbox.shift());
      tokens -= 1;
    }
    if (outbox.length && !pumpTimer) {
      pumpTimer = setTimeout(() => { pumpTimer = null; pump(); }, 125);
    }
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    state.ws = ws;
    state.phase = 'connecting';
    if (state.everRegistered) setStatus('reconnecting', 'Reconnecting…');
    ws.addEventListener('message', (e) => {
      if (ws !== state.ws) return;
      let ev;
      try { ev = JSON.parse(e.data); } catch { return; }
      handle(ev);
    });
    ws.addEventListener('close', () => { if (ws === state.ws) onClosed(); });
  }

  function register() {
    state.phase = 'choosing';
    if (state.password) send(`/login ${state.wantNick} ${state.password}`);
    else send(`/nick ${state.wantNick}`);
  }

  function onClosed() {
    const wasOnline = state.phase === 'online';
    state.ws = null;
    state.phase = 'idle';
    if (outbox.length) toast(`${outbox.length} line(s) could not be sent.`);
    outbox.length = 0;
    dropPages();
    for (const c of state.convs.values()) {
      // A /read on its way may be lost: the next one may repeat it.
      clearTimeout(c.readTimer);
      c.readTimer = null;
      c.sentRead = c.lastRead;
    }
    if (wasOnline) {
      // Remember where we were, to get back there once reconnected.
      state.restore = { rooms: [...state.joined.values()], current: state.current, view: state.view };
      state.joined.clear();
      state.members = [];
      renderMembers();
      renderSidebar();
      systemLine(state.convs.get(state.view), 'Connection lost. Reconnecting…');
    }
    if (state.everRegistered && !state.stopped) {
      scheduleReconnect();
    } else if (!state.everRegistered) {
      if (state.joining) showJoinError('Cannot reach the chat server. Try again in a moment.');
      setJoinBusy(false);
    }
  }

  /** Exponential backoff: 0.5 s doubling to 30 s, each with ±25 % jitter. */
  function scheduleReconnect() {
    const step = Math.min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** state.attempt);
    const delay = Math.min(BACKOFF_MAX, step * (0.75 + Math.random() * 0.5));
    state.attempt += 1;
    state.retryAt = Date.now() + delay * 1000;
    state.retryTimer = setTimeout(connect, delay * 1000);
    tickCountdown();
  }

  function tickCountdown() {
    if (!state.retryTimer) return;
    const left = Math.ceil((state.retryAt - Date.now()) / 1000);
    setStatus('reconnecting', left > 1 ? `Connection lost. Reconnecting in ${left} s…` : 'Connection lost. Reconnecting…');
    if (left > 1) setTimeout(tickCountdown, 1000);
  }

  function reconnectNow() {
    if (state.ws) return;
    state.stopped = false;
    state.quitting = false;
    state.attempt = 0;
    connect();
  }

  // ------------------------------------------------------------ the events

  const JOIN_ERRORS = new Set(['bad_nick', 'nick_taken', 'nick_registered', 'bad_login', 'login_throttled', 'bad_args', 'banned',
    'too_many_sessions']);

  function handle(ev) {
    switch (ev.type) {
      case 'welcome':
        if (state.wantNick) register();
        else state.phase = 'choosing';
        break;
      case 'registered': onRegistered(ev); break;
      case 'join': onJoin(ev); break;
      case 'leave': onLeave(ev); break;
      case 'current': onCurrent(ev); break;
      case 'message': {
        if (ev.search) { onSearchResult(ev); break; }
        const c = conv('room', ev.room);
        if (renderMessage(c, ev) && !ev.history) live(c, ev);
        else if (ev.history && seen(c)) markRead(c);
        break;
      }
      case 'dm': {
        if (ev.search) { onSearchResult(ev); break; }
        const peer = isMe(ev.from) ? ev.to : ev.from;
        const fresh = !state.convs.has(dmKey(peer));
        const c = conv('dm', peer);
        if (fresh) renderSidebar();
        if (fresh && !ev.history && state.account) {
          // Started by this message: what came before it is in the account's history.
          c.more = true;
          c.before = ev.id;
        } else if (!ev.history && c.more === true && c.before === null) {
          c.before = ev.id; // known from /unread only: its history is before this one
        }
        if (renderMessage(c, ev) && !ev.history) live(c, ev);
        else if (ev.history && seen(c)) markRead(c);
        break;
      }
      case 'history': {
        const c = ev.peer ? state.convs.get(dmKey(ev.peer)) : state.convs.get(roomKey(ev.room));
        if (!c) break;
        c.historyOpen = false;
        const replay = c.replay;
        c.replay = null;
        if (c.loading) {
          finishPage(c, ev);
        } else if (replay && ev.more && replay.sep && replay.newest && replay.oldest > replay.newest) {
          // The history on join does not reach what was shown (messages were said while
          // we were away): start again from it, so that paging back reaches the gap.
          restartFrom(c, replay.sep);
          c.more = ev.more;
          c.before = ev.before;
          if (c.key === state.view) fillView();
        } else if (c.more === undefined) {
          // The first history of this conversation (on join): page back from there.
          // Later ones (after a reconnect) are newer than what paging reached.
          c.more = ev.more;
          c.before = ev.before;
          if (c.key === state.view) fillView();
        }
        break;
      }
      case 'topic': {
        const c = conv('room', ev.room);
        c.topic = ev.topic;
        if (ev.changed) systemLine(c, `${ev.by} set the topic: ${ev.topic}`);
        renderHeader();
        break;
      }
      case 'nick': onNick(ev); break;
      case 'unread': onUnread(ev); break;
      case 'read': onRead(ev); break;
      case 'search': onSearchEnd(ev); break;
      case 'sessions':
        listBox(state.convs.get(state.view), 'Sessions of your account', entries(ev.sessions)
          .map((x) => `${x.id}  ${x.transport}  ${x.address}  since ${stamp(x.since)}` +
            (x.current ? '  (this one)' : '')), 'None.', 'sessions');
        break;
      case 'rooms': state.roomList = ev.rooms; renderSidebar(); break;
      case 'room': onRoomEvent(ev); break;
      case 'who':
        if (state.current && lower(ev.room) === lower(state.current)) {
          // Roles by nickname; a server that sends none leaves everyone a member.
          const roles = new Map(entries(ev.members).map((m) => [lower(m.nick), m.role]));
          state.members = (Array.isArray(ev.nicks) ? ev.nicks : []).map((nick) => {
            const role = roles.get(lower(nick));
            return { nick, role: RANK[role] !== undefined ? role : 'member' };
          });
          renderMembers();
        }
        break;
      case 'kick': case 'mode': case 'role': case 'ban': case 'unban': case 'bans':
      case 'mute': case 'unmute': case 'invite': case 'invited': case 'wall': case 'modlog':
      case 'kline': case 'unkline': case 'klines': case 'kill':
        onModeration(ev);
        break;
      case 'pong':
        if (ev.token === 'restored') finishRestore();
        break;
      case 'error': onError(ev); break;
      case 'logout': backToJoinScreen('Logged out. Choose a nickname.'); break;
      case 'bye':
        state.stopped = true;
        if (ev.reason === 'logged in from elsewhere') setStatus('offline', 'You logged in from somewhere else.');
        else if (state.quitting || !ev.reason) setStatus('offline', 'You left the chat.');
        else setStatus('offline', `Disconnected: ${ev.reason}`); // a /kill, a server ban
        break;
      case 'shutdown':
        toast('The server is shutting down; reconnecting when it is back.', 'info');
        break;
      case 'help': showHelp(state.convs.get(state.view), ev.commands); break;
      case 'passwd':
        if (state.pendingPassword) state.password = state.pendingPassword;
        state.pendingPassword = null;
        toast('Password changed.', 'info');
        break;
      default: break; // format and anything newer: nothing to show
    }
  }

  function onRegistered(ev) {
    const first = state.phase !== 'online';
    const wasAccount = state.account;
    state.me = ev.nick;
    state.wantNick = ev.nick;
    state.account = ev.account;
    if (ev.account && state.pendingPassword) state.password = state.pendingPassword;
    if (!ev.account) state.password = null;
    state.pendingPassword = null;
    try { localStorage.setItem('chatd.nick', ev.nick); } catch { /* private mode */ }
    renderHeader();
    // Logged in: the badges start from the account's read markers.
    if (ev.account && (first || !wasAccount)) state.needUnread = true;
    if (!first) {
      // A /login, /register or rename while online.
      if (state.needUnread) { state.needUnread = false; send('/unread'); }
      return;
    }
    state.phase = 'online';
    state.attempt = 0;
    state.joining = false;
    setStatus('online', 'Connected');
    if (!state.everRegistered) {
      state.everRegistered = true;
      ui.joinScreen.hidden = true;
      ui.app.hidden = false;
      ui.input.focus();
    }
    // After a reconnect: rejoin our rooms, leave general if we had, restore the current room.
    const r = state.restore;
    state.restore = null;
    if (r) {
      state.restoring = r;
      for (const room of r.rooms) if (lower(room) !== 'general') send(joinLine(room));
      if (!r.rooms.some((room) => lower(room) === 'general')) send('/leave general');
      if (r.current) send(joinLine(r.current));
      send('/ping restored'); // answered after everything above
    }
    send('/rooms watch'); // the list, then every room created or removed: no polling
    if (state.needUnread) { state.needUnread = false; send('/unread'); }
  }

  function finishRestore() {
    const r = state.restoring;
    state.restoring = null;
    if (!r) return;
    // Back to the private conversation we were in, else to the current room.
    const dm = r.view && r.view[0] === '@' && state.convs.has(r.view);
    showView(dm ? r.view : state.current ? roomKey(state.current) : null);
    systemLine(state.convs.get(state.view), `Reconnected as ${state.me}.`);
  }

  /** A room came or went (we watch them: /rooms watch); the list follows. */
  function onRoomEvent(ev) {
    const rooms = state.roomList.filter((r) => lower(r.name) !== lower(ev.room));
    if (ev.event === 'created') rooms.push({ name: ev.room, members: ev.members });
    else if (ev.event !== 'removed') return;
    state.roomList = rooms;
    renderSidebar();
  }

  function onJoin(ev) {
    const c = conv('room', ev.room);
    c.kicks.delete(lower(ev.nick));
    if (isCurrent(ev.room) && !state.members.some((m) => lower(m.nick) === lower(ev.nick))) {
      setMember(ev.nick, 'member');
    }
    if (isMe(ev.nick)) {
      state.joined.set(lower(ev.room), ev.room);
      // Its history on join comes next (or nothing, then current): compare it with
      // the newest message shown, and do not page back until it is in.
      let newest = 0;
      for (const id of c.ids) if (id > newest) newest = id;
      c.replay = { newest, oldest: null, sep: null };
      if (!state.restoring) systemLine(c, `You joined #${ev.room}`);
      renderSidebar();
    } else {
      systemLine(c, `${ev.nick} joined`);
    }
    scheduleRefresh();
  }

  function onLeave(ev) {
    const c = conv('room', ev.room);
    const kicked = c.kicks.delete(lower(ev.nick)); // the kick's line said it
    if (isCurrent(ev.room)) dropMember(ev.nick);
    if (isMe(ev.nick)) {
      state.joined.delete(lower(ev.room));
      if (!state.restoring && !kicked) systemLine(c, `You left #${ev.room}${because(ev.reason)}`);
      renderSidebar();
    } else if (!kicked) {
      systemLine(c, ev.reason ? `${ev.nick} left (${ev.reason})` : `${ev.nick} left`);
    }
    scheduleRefresh();
  }

  function onCurrent(ev) {
    state.current = ev.room;
    if (ev.room) conv('room', ev.room).replay = null; // its history, if any, is in
    state.members = [];
    renderMembers();
    // While restoring after a reconnect the view is put back at the end.
    if (!state.restoring) showView(ev.room ? roomKey(ev.room) : null);
    if (ev.room) send('/who');
  }

  function onNick(ev) {
    const text = `${ev.old} is now known as ${ev.new}`;
    const member = state.members.find((m) => lower(m.nick) === lower(ev.old));
    if (member) { member.nick = ev.new; renderMembers(); }
    if (isMe(ev.old)) {
      state.me = ev.new;
      state.wantNick = ev.new;
      try { localStorage.setItem('chatd.nick', ev.new); } catch { /* private mode */ }
      systemLine(state.convs.get(state.view), `You are now known as ${ev.new}`);
      renderHeader();
    } else {
      systemLine(state.current ? state.convs.get(roomKey(state.current)) : null, text);
      // The private conversation follows the peer's new name.
      const old = state.convs.get(dmKey(ev.old));
      if (old && lower(ev.old) !== lower(ev.new) && !state.convs.has(dmKey(ev.new))) {
        state.convs.delete(old.key);
        old.key = dmKey(ev.new);
        old.name = ev.new;
        state.convs.set(old.key, old);
        if (state.view === dmKey(ev.old)) state.view = old.key;
        systemLine(old, text);
        renderHeader();
      } else if (old) {
        old.name = ev.new;
      }
      renderSidebar();
    }
    scheduleRefresh();
  }

  function onError(ev) {
    if (state.search && state.search.pending && SEARCH_ERRORS.has(ev.code)) {
      // Most likely the answer to the search: said where it was asked.
      state.search.pending = false;
      searchStatus.textContent = ev.text;
      if (searchDialog.open) return;
    }
    if (state.phase === 'choosing' && JOIN_ERRORS.has(ev.code)) {
      if (state.everRegistered && (ev.code === 'nick_taken' || ev.code === 'nick_registered')) {
        // Our old session may still hold the name: take a variant and say so.
        const next = `${state.wantNick.slice(0, 31)}_`;
        toast(`${state.wantNick} is taken; you are now ${next}.`, 'info');
        state.wantNick = next;
        state.password = null;
        register();
        return;
      }
      if (state.everRegistered) {
        backToJoinScreen(`Could not get ${state.wantNick} back after reconnecting: ${ev.text}`);
        return;
      }
      showJoinError(ev.text);
      setJoinBusy(false);
      return;
    }
    toast(ev.text);
  }

  /** Debounced /rooms and /who: at most once a second, after joins, leaves and renames. */
  let refreshTimer = null;
  let lastRefresh = 0;
  function scheduleRefresh() {
    if (refreshTimer) return;
    const wait = Math.max(0, lastRefresh + 1000 - Date.now());
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      lastRefresh = Date.now();
      send('/rooms');
      if (state.current) send('/who');
    }, wait);
  }

  // ----------------------------------------------------- join screen, input

  function showJoinError(text) {
    ui.joinError.textContent = text;
    ui.joinError.hidden = !text;
  }

  function setJoinBusy(busy) {
    state.joining = busy;
    ui.joinButton.disabled = busy;
    ui.joinButton.textContent = busy ? 'Joining…' : 'Join chat';
  }

  function backToJoinScreen(message) {
    Object.assign(state, {
      me: null, account: false, password: null, everRegistered: false, restore: null,
      restoring: null, current: null, view: null, members: [], roomList: [], phase: 'choosing',
      needUnread: false, search: null,
    });
    state.joined.clear();
    state.convs.clear();
    state.keys.clear();
    ui.messages.replaceChildren();
    setStatus('connecting', 'Choosing a nickname');
    ui.app.hidden = true;
    ui.joinScreen.hidden = false;
    showJoinError(message);
    setJoinBusy(false);
    ui.nickInput.focus();
  }

  ui.joinForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const nick = ui.nickInput.value.trim();
    const password = ui.passwordInput.value;
    if (!NICK_RE.test(nick)) {
      showJoinError('A nickname is 1 to 32 letters, digits, “_”, “-” or “.”.');
      return;
    }
    showJoinError('');
    setJoinBusy(true);
    state.wantNick = nick;
    state.password = password || null;
    state.pendingPassword = state.password;
    state.stopped = false;
    if (state.phase === 'choosing' && connected()) register();
    else if (!state.ws) connect();
  });

  /** Turn what the user typed into protocol lines, one per non-empty line. */
  function linesToSend(value) {
    const c = state.convs.get(state.view);
    return value.split(/\r?\n/).filter((l) => l.trim() !== '').map((line) => {
      if (line.startsWith('/') && !line.startsWith('//')) {
        // Remember a typed password, to log in again after a reconnect.
        const m = line.match(/^\/(login|register|passwd)\s+(?:\S+\s+)?(\S+)\s*$/i);
        if (m) state.pendingPassword = m[2];
        if (/^\/quit(\s|$)/i.test(line)) state.quitting = true;
        if (/^\/search\s+\S/i.test(line)) typedSearch(line);
        // Remember a room's key, to join it again after a reconnect.
        const k = line.match(/^\/join\s+#?(\S+)\s+(\S+)\s*$/i);
        if (k) state.keys.set(lower(k[1]), k[2]);
        return line; // a command: sent as typed
      }
      // "//x" says "/x": the server strips one slash in rooms; /msg text is literal.
      if (c && c.kind === 'dm') return `/msg ${c.name} ${line.startsWith('//') ? line.slice(1) : line}`;
      return line;
    });
  }

  function submitMessage() {
    const value = ui.input.value;
    if (!value.trim()) return;
    if (!connected() || state.phase !== 'online') {
      toast('Not connected: your message was not sent.');
      return;
    }
    for (const line of linesToSend(value)) send(line);
    ui.input.value = '';
    autosize();
    scrollToBottom();
  }

  function autosize() {
    ui.input.style.height = 'auto';
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, 160)}px`;
  }

  ui.composer.addEventListener('submit', (e) => { e.preventDefault(); submitMessage(); ui.input.focus(); });
  ui.input.addEventListener('keydown', (e) => {
    // Enter sends; Shift+Enter adds a line; never while an IME is composing.
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submitMessage();
    }
  });
  ui.input.addEventListener('input', autosize);

  ui.leave.addEventListener('click', () => {
    const c = state.convs.get(state.view);
    if (!c) return;
    if (c.kind === 'room') {
      send(`/leave ${c.name}`);
    } else {
      state.convs.delete(c.key);
      showView(state.current ? roomKey(state.current) : null);
    }
  });

  $('create-room-button').addEventListener('click', () => {
    ui.createForm.hidden = !ui.createForm.hidden;
    if (!ui.createForm.hidden) ui.createInput.focus();
  });
  ui.createForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = ui.createInput.value.trim().replace(/^#/, '');
    if (!name) return;
    send(`/create ${name}`);
    ui.createInput.value = '';
    ui.createForm.hidden = true;
    closeDrawers();
  });
  ui.createInput.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') ui.createForm.hidden = true;
  });
  $('refresh-rooms').addEventListener('click', () => send('/rooms'));

  ui.messages.addEventListener('scroll', () => {
    if (nearBottom()) ui.jump.hidden = true;
    if (ui.messages.scrollTop < NEAR_TOP) loadOlder();
  });
  ui.jump.addEventListener('click', scrollToBottom);
  ui.retry.addEventListener('click', reconnectNow);

  // Drawers: the sidebar on phones, the member list on narrow screens.
  const menuButton = $('menu-button');
  const membersButton = $('members-button');
  const backdrop = $('backdrop');
  const wide = matchMedia('(min-width: 1000px)');
  // "members-toggled" flips the default: shown on wide screens, a closed drawer below.
  const membersShown = () => ui.app.classList.contains('members-toggled') !== wide.matches;
  function closeDrawers() {
    ui.app.classList.remove('sidebar-open');
    if (!wide.matches) ui.app.classList.remove('members-toggled');
    syncDrawers();
  }
  function syncDrawers() {
    const sidebar = ui.app.classList.contains('sidebar-open');
    menuButton.setAttribute('aria-expanded', String(sidebar));
    membersButton.setAttribute('aria-expanded', String(membersShown()));
    backdrop.hidden = !sidebar && !(membersShown() && !wide.matches);
  }
  wide.addEventListener('change', () => { ui.app.classList.remove('members-toggled'); syncDrawers(); });
  menuButton.addEventListener('click', () => {
    ui.app.classList.toggle('sidebar-open');
    if (ui.app.classList.contains('sidebar-open')) send('/rooms');
    syncDrawers();
  });
  membersButton.addEventListener('click', () => { ui.app.classList.toggle('members-toggled'); syncDrawers(); });
  backdrop.addEventListener('click', closeDrawers);
  document.addEventListener('keydown', (e) => {
    // Escape in a dialog closes the dialog only.
    if (e.key === 'Escape' && !document.querySelector('dialog[open]')) closeDrawers();
  });

  // Back in view: clear the unread count of what is on screen, refresh the lists,
  // and do not make the user wait for a long backoff.
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) return;
    readView();
    syncNotifyButton(); // its permission may have been changed in the browser's settings
    if (state.phase === 'online') scheduleRefresh();
    else if (state.retryTimer && state.retryAt - Date.now() > 2000) reconnectNow();
  });
  window.addEventListener('focus', readView);
  window.addEventListener('online', () => { if (state.retryTimer) reconnectNow(); });

  try { ui.nickInput.value = localStorage.getItem('chatd.nick') || ''; } catch { /* private mode */ }
  syncNotifyButton();
  ui.nickInput.focus();
})();
