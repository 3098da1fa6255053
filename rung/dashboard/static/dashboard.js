// Rung dashboard: live sections over server-sent events, controls, log follow.
// No framework, nothing from the network but this server.
"use strict";

(function () {
  const token = () => document.querySelector('meta[name="rung-token"]').content;

  // ---------------------------------------------------------------- controls
  async function post(button) {
    const action = button.dataset.action;
    if ((action === "kill" || action === "cancel") &&
        !window.confirm(button.textContent.trim() + "?")) {
      return;
    }
    const out = document.getElementById("control-result");
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST",
        headers: {"X-Rung-Token": token()},
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({error: response.statusText}));
      if (out) {
        out.textContent = response.ok ? action + ": now " + body.state : "refused: " + body.error;
        out.className = "control-result " + (response.ok ? "ok" : "error");
      }
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.control");
    if (button) {
      event.preventDefault();
      post(button);
    }
  });

  // ---------------------------------------------------------------- experiment page
  const root = document.getElementById("experiment");
  if (root) {
    const id = root.dataset.experiment;
    let seq = Number(root.dataset.seq);
    let inflight = false;
    let dirty = false;
    let cost = 0;  // how long the last refresh took, in ms

    // Refresh the live sections; while updates keep coming, leave the page idle at
    // least twice as long as a refresh takes, so a large page stays usable.
    async function refresh() {
      if (inflight) { dirty = true; return; }
      inflight = true;
      try {
        do {
          if (cost > 100) {
            await new Promise((done) => window.setTimeout(done, 2 * cost));
          }
          dirty = false;
          const started = performance.now();
          const query = window.location.search.replace(/^\?/, "");
          const response = await fetch("/experiments/" + encodeURIComponent(id) + "/sections?" + query);
          if (!response.ok) { break; }
          const body = await response.json();
          for (const [name, html] of Object.entries(body.sections)) {
            const target = root.querySelector('[data-section="' + name + '"]');
            if (target) { target.innerHTML = html; }
          }
          root.dataset.seq = String(body.seq);
          root.dataset.rendered = String(body.seq);
          await new Promise((done) => requestAnimationFrame(() => done()));
          cost = performance.now() - started;
        } while (dirty);
      } finally {
        inflight = false;
      }
    }

    function addEntries(entries) {
      const list = document.getElementById("activity");
      for (const entry of entries) {
        if (list.querySelector('li[data-seq="' + entry.seq + '"]')) { continue; }
        const item = document.createElement("li");
        item.dataset.seq = String(entry.seq);
        const number = document.createElement("span");
        number.className = "seq";
        number.textContent = String(entry.seq);
        const at = document.createElement("span");
        at.className = "at";
        at.textContent = Number(entry.at).toFixed(1) + " s";
        item.append(number, " ", at, " ", entry.event);
        if (entry.decisions.length) {
          const sub = document.createElement("ul");
          for (const text of entry.decisions) {
            const line = document.createElement("li");
            line.textContent = text;
            sub.append(line);
          }
          item.append(sub);
        }
        list.prepend(item);
      }
      while (list.children.length > 500) { list.lastElementChild.remove(); }
    }

    const stream = new EventSource("/experiments/" + encodeURIComponent(id) + "/stream?after=" + seq);
    const live = document.getElementById("live");
    stream.onopen = () => { live.hidden = false; };
    stream.onerror = () => { live.hidden = true; };
    stream.onmessage = (message) => {
      const data = JSON.parse(message.data);
      root.dataset.received = String(data.to);
      if (data.gap) { window.location.reload(); return; }
      addEntries(data.entries);
      seq = data.to;
      refresh();
    };
    stream.addEventListener("end", () => { live.textContent = "ended"; });

    // A click on a rung's result: the searcher's reasons, from the log.
    const why = document.getElementById("why");
    root.addEventListener("click", async (event) => {
      const mark = event.target.closest("[data-trial]");
      if (!mark || mark.closest("a")) { return; }
      const trial = mark.dataset.trial;
      if (why && mark.closest("#rungs")) {
        const query = new URLSearchParams({trial, bracket: mark.dataset.bracket, rung: mark.dataset.rung});
        const response = await fetch("/experiments/" + encodeURIComponent(id) + "/why?" + query);
        if (!response.ok) { return; }
        const story = await response.json();
        why.replaceChildren();
        const head = document.createElement("p");
        const link = document.createElement("a");
        link.href = story.href;
        link.textContent = "trial " + story.trial_id;
        head.append(link, " · " + story.summary);
        const list = document.createElement("ul");
        for (const text of story.decisions) {
          const item = document.createElement("li");
          item.textContent = text;
          list.append(item);
        }
        why.append(head, list);
        why.hidden = false;
        return;
      }
      if (mark.closest('[data-section]')) {
        window.location.href = "/experiments/" + encodeURIComponent(id) + "/trials/" + encodeURIComponent(trial);
      }
    });

    // The axes form: hide the unchecked axes.
    for (const form of root.querySelectorAll("form")) {
      const boxes = form.querySelectorAll("input.axis");
      if (!boxes.length) { continue; }
      form.addEventListener("submit", () => {
        const hidden = [...boxes].filter((b) => !b.checked).map((b) => b.value);
        form.querySelector('input[name="hide_axes"]').value = hidden.join(",");
        for (const box of boxes) { box.disabled = true; }
      });
    }
  }

  // ---------------------------------------------------------------- experiments list
  // The list is many experiments' summaries: it is fetched again every two seconds
  // while the page is visible (each experiment's own page streams its records).
  const rows = document.getElementById("experiment-rows");
  const table = document.getElementById("experiments");
  if (rows && table) {
    const again = async () => {
      try {
        if (!document.hidden) {
          const response = await fetch(table.dataset.liveRows);
          if (response.ok) { rows.innerHTML = await response.text(); }
        }
      } finally {
        window.setTimeout(again, 2000);
      }
    };
    window.setTimeout(again, 2000);
  }

  // ---------------------------------------------------------------- trial page
  // The trial's own sections follow its experiment's stream: fetched again (at most
  // once a second) when a record comes.
  const trialRoot = document.getElementById("trial");
  if (trialRoot) {
    const live = document.getElementById("trial-live");
    let waiting = false;
    const stream = new EventSource("/experiments/" + encodeURIComponent(trialRoot.dataset.experiment)
                                   + "/stream?after=" + trialRoot.dataset.seq);
    stream.onmessage = () => {
      if (waiting) { return; }
      waiting = true;
      window.setTimeout(async () => {
        waiting = false;
        const response = await fetch(window.location.href);
        if (!response.ok) { return; }
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.getElementById("trial-live");
        if (fresh) { live.innerHTML = fresh.innerHTML; }
        const state = page.getElementById("trial-state");
        const current = document.getElementById("trial-state");
        if (state && current) { current.replaceWith(state); }
      }, 1000);
    };
  }

  const log = document.getElementById("log");
  if (log) {
    let after = null;  // null: open on the log's end
    let afterSeq = 0;  // lines an older experiment kept in its event log
    const follow = document.getElementById("follow");
    const rank = document.getElementById("log-rank");  // in a trial of several processes
    let generation = 0;  // a change of rank starts the log again; older fetches are dropped
    let timer = null;  // the next poll: one chain of polls at a time
    let running = false;
    async function more() {
      timer = null;
      running = true;
      const mine = generation;
      try {
        let page;
        do {
          let query = after === null ? "?tail=1" : "?after=" + after + "&after_seq=" + afterSeq;
          if (rank && rank.value !== "") { query += "&rank=" + encodeURIComponent(rank.value); }
          const response = await fetch(log.dataset.url + query);
          if (!response.ok || mine !== generation) { return; }
          page = await response.json();
          if (mine !== generation) { return; }  // the rank changed while it was read
          after = page.next;
          afterSeq = page.next_seq;
          const text = page.lines.map((l) => "[" + l.attempt + " " + l.stream + "] "
            + (l.rank === null || l.rank === undefined ? "" : "[rank=" + l.rank + "] ") + l.text).join("\n");
          if (text) { log.append(text + "\n"); }
        } while (page.more);
        while (log.childNodes.length > 200) { log.firstChild.remove(); }
        if (follow.checked) { log.scrollTop = log.scrollHeight; }
      } finally {
        if (mine === generation) {  // else a newer chain of polls has taken over
          running = false;
          if (follow.checked && timer === null) { timer = window.setTimeout(more, 1000); }
        }
      }
    }
    follow.addEventListener("change", () => {
      if (timer !== null) { window.clearTimeout(timer); timer = null; }
      if (follow.checked && !running) { more(); }
    });
    if (rank) {
      rank.addEventListener("change", () => {
        generation += 1;  // a fetch under way for the old rank is dropped
        after = null;
        afterSeq = 0;
        log.textContent = "";
        if (timer !== null) { window.clearTimeout(timer); timer = null; }
        running = false;
        more();
      });
    }
    more();
  }
})();
