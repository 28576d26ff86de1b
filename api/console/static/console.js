// keel reviewer console: progressive enhancement only. Every page works without this file;
// it adds live countdowns, takes gates decided elsewhere off the page (polling the console's
// /live endpoints), and previews an edit's diff while typing.
(function () {
  "use strict";
  var pollMs = parseInt(document.body.getAttribute("data-poll-ms") || "2000", 10);

  function duration(seconds) {
    seconds = Math.floor(Math.abs(seconds));
    if (seconds < 120) return seconds + "s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m";
    if (seconds < 172800) return Math.floor(seconds / 3600) + "h " + Math.floor((seconds % 3600) / 60) + "m";
    return Math.floor(seconds / 86400) + "d " + Math.floor((seconds % 86400) / 3600) + "h";
  }

  function tickCountdowns() {
    var now = Date.now();
    document.querySelectorAll("time.countdown[data-deadline]").forEach(function (el) {
      var left = (Date.parse(el.getAttribute("data-deadline")) - now) / 1000;
      el.textContent = left > 0 ? "in " + duration(left) : "overdue by " + duration(left);
      el.classList.toggle("overdue", left <= 0);
      el.classList.toggle("soon", left > 0 && left < 3600);
    });
  }

  function announce(text) {
    var live = document.getElementById("live-status");
    if (live) live.textContent = text;
  }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.assign("/console/sign-in"); return null; }
        return response.json();
      });
  }

  function pollQueue(list) {
    getJson(list.getAttribute("data-live-url")).then(function (state) {
      if (!state || !state.pending) return;
      var pending = new Set(state.pending);
      var removed = 0;
      list.querySelectorAll("li[data-gate-key]").forEach(function (item) {
        if (!pending.has(item.getAttribute("data-gate-key"))) { item.remove(); removed++; }
      });
      var shown = list.querySelectorAll("li[data-gate-key]").length;
      var count = document.getElementById("queue-count");
      if (count) count.textContent = "(" + shown + ")";
      if (shown === 0) {
        var empty = document.getElementById("queue-empty");
        if (empty) empty.hidden = false;
      }
      if (removed) announce(removed + " gate(s) were decided elsewhere and left your queue.");
    }).catch(function () { /* the next poll tries again */ });
  }

  var statusText = {
    approved: "Approved", edited: "Approved with edits", rejected: "Rejected",
    timed_out: "Timed out (default action)", cancelled: "Cancelled"
  };

  function pollGate(box) {
    getJson(box.getAttribute("data-live-url")).then(function (state) {
      if (!state || !state.found) return;
      var decided = document.getElementById("decided");
      if (state.status === "pending") {
        if (state.decided_by.length && decided) {
          decided.textContent = "Pending: " + state.decided_by.length + " of " +
            state.approvals_required + " approvals (" + state.decided_by.join(", ") + ").";
        }
        return;
      }
      if (box.getAttribute("data-status") === state.status) return;
      box.setAttribute("data-status", state.status);
      var who = state.decided_by.length ? " by " + state.decided_by.join(", ") : "";
      if (decided) {
        decided.classList.remove("pending");
        decided.textContent = (statusText[state.status] || state.status) + who +
          " while you were looking: nothing more to decide here.";
      }
      var decide = document.getElementById("decide");
      if (decide) decide.remove();
    }).catch(function () { /* the next poll tries again */ });
  }

  function liveDiff(textarea) {
    var target = document.getElementById(textarea.getAttribute("data-draft-diff"));
    var form = textarea.form;
    var timer = null;
    textarea.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var body = new URLSearchParams(new FormData(form));
        body.set("action", "preview");
        // form.action would be the button named "action": read the attribute.
        fetch(form.getAttribute("action"), {
          method: "POST", credentials: "same-origin", body: body,
          headers: { "X-Console-Fragment": "diff" }
        }).then(function (response) { return response.ok ? response.text() : null; })
          .then(function (html) { if (html !== null && target) target.innerHTML = html; })
          .catch(function () {});
      }, 400);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tickCountdowns();
    setInterval(tickCountdowns, 1000);
    var list = document.getElementById("queue");
    if (list) setInterval(function () { pollQueue(list); }, pollMs);
    var box = document.getElementById("gate-state");
    if (box && box.getAttribute("data-status") === "pending") {
      setInterval(function () { pollGate(box); }, pollMs);
    }
    document.querySelectorAll("textarea[data-draft-diff]").forEach(liveDiff);
  });
})();
