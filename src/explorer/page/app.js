// logbridge explorer: one page over the REST API (GET /logs, /logs/stats, /logs/tail, /logs/export,
// /alerts).
// This entry module wires the page's controls to the modules that own them and starts it.
//
// Everything the server sends is untrusted: it reaches the page only through textContent,
// createElement and attribute setters, never through innerHTML. No inline scripts or styles, so
// the page runs under `default-src 'self'; style-src 'self'; img-src 'self' data:`.

import { state, emptyFilters } from './state.js';
import { $ } from './dom.js';
import { filtersFromURL, roomFromURL, pageQuery, fillInputs } from './filters.js';
import { clearError } from './errors.js';
import { forgetKey, onKeySubmit, startOrAskForKey } from './key.js';
import { apply, load, loadMore, renderTotals, loadMoreOnScroll } from './results.js';
import { wireTable } from './rows.js';
import { renderStats, redrawHistogramOnResize } from './stats.js';
import { openCall, closeCall } from './call.js';
import { setLive } from './live.js';
import { exportLogs } from './export.js';
import { createRule } from './alerts.js';

function isTyping(el) {
  if (!(el instanceof Element)) return false;
  if (el.isContentEditable) return true;
  if (el instanceof HTMLTextAreaElement || el instanceof HTMLSelectElement) return true;
  if (el instanceof HTMLInputElement) return !['checkbox', 'radio', 'button', 'submit', 'reset'].includes(el.type);
  return false;
}

function init() {
  $('key-form').addEventListener('submit', onKeySubmit);
  $('forget-key').addEventListener('click', () => forgetKey(''));

  $('filters').addEventListener('submit', (ev) => { ev.preventDefault(); apply(); });
  for (const id of ['f-log_type', 'f-status']) $(id).addEventListener('change', () => apply());
  $('f-range').addEventListener('change', () => {
    if ($('f-range').value === 'custom') {
      $('f-start_time').focus();
      return;
    }
    $('f-start_time').value = '';
    $('f-end_time').value = '';
    apply();
  });
  for (const id of ['f-start_time', 'f-end_time']) {
    $(id).addEventListener('input', () => {
      if ($('f-start_time').value || $('f-end_time').value) $('f-range').value = 'custom';
    });
  }
  $('clear-filters').addEventListener('click', () => {
    fillInputs(emptyFilters());
    apply();
  });

  $('retry').addEventListener('click', () => {
    const retry = state.retry;
    clearError();
    retry?.();
  });
  $('load-more').addEventListener('click', () => loadMore());
  $('live').addEventListener('change', () => setLive($('live').checked));
  $('export-csv').addEventListener('click', (ev) => exportLogs('csv', ev.currentTarget));
  $('export-ndjson').addEventListener('click', (ev) => exportLogs('ndjson', ev.currentTarget));
  $('close-call').addEventListener('click', () => closeCall());
  $('alert-form').addEventListener('submit', createRule);

  wireTable($('logs'));
  wireTable($('call-logs'));

  loadMoreOnScroll();
  redrawHistogramOnResize();

  document.addEventListener('keydown', (ev) => {
    if (ev.defaultPrevented) return;
    if (ev.key === 'Escape' && !$('call-view').hidden) {
      ev.preventDefault();
      closeCall();
      return;
    }
    if (ev.key === '/' && !ev.ctrlKey && !ev.metaKey && !ev.altKey && state.key && !isTyping(ev.target)) {
      ev.preventDefault();
      if (!$('call-view').hidden) closeCall();
      const q = $('f-q');
      q.focus();
      q.select();
    }
  });

  window.addEventListener('popstate', () => {
    if (!state.key) return; // the key form reads the URL once a key is given
    const f = filtersFromURL();
    if (pageQuery(f, null) !== pageQuery(state.filters, null)) {
      state.filters = f;
      fillInputs(f);
      load();
    }
    const room = roomFromURL();
    if (room && room !== state.room) openCall(room, { mode: null });
    else if (!room && state.room) closeCall(null);
  });

  renderStats();
  renderTotals();

  startOrAskForKey();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
