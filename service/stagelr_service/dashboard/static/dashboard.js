// stagelr dashboard: refresh a running study's page in place.
//
// The page's changing part lives in #live. Every two seconds this asks the server for
// that part, sending the version it shows; the server answers 204 while nothing has
// changed, or the new HTML (and its version) when something has. Polling stops when the
// server says the study is finished (X-Stagelr-Live: off). No framework, no inline
// script: the Content-Security-Policy allows only this file.
(function () {
  "use strict";

  var PERIOD_MS = 2000;
  var MAX_BACKOFF_MS = 30000;

  function start(box) {
    var url = box.getAttribute("data-live-url");
    var delay = PERIOD_MS;

    function schedule(ms) {
      window.setTimeout(poll, ms);
    }

    function stop() {
      box.setAttribute("data-live", "off");
      var dot = box.querySelector(".live-dot");
      if (dot) {
        dot.parentNode.removeChild(dot);
      }
    }

    function poll() {
      var version = box.getAttribute("data-version") || "";
      fetch(url + "?since=" + encodeURIComponent(version), {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html" }
      })
        .then(function (response) {
          if (response.status === 401) {
            window.location.assign("/dashboard/login?next=" +
              encodeURIComponent(window.location.pathname));
            return null;
          }
          if (response.status === 404) {
            stop();
            return null;
          }
          if (response.status !== 200 && response.status !== 204) {
            throw new Error("HTTP " + response.status);
          }
          var live = response.headers.get("X-Stagelr-Live");
          var next = response.headers.get("X-Stagelr-Version");
          if (response.status === 204) {
            return { live: live, version: next, html: null };
          }
          return response.text().then(function (html) {
            return { live: live, version: next, html: html };
          });
        })
        .then(function (update) {
          if (update === null) {
            return;
          }
          if (update.html !== null) {
            box.innerHTML = update.html;
            box.setAttribute("data-refreshed", String(Date.now()));
          }
          if (update.version) {
            box.setAttribute("data-version", update.version);
          }
          delay = PERIOD_MS;
          if (update.live === "off") {
            stop();
            return;
          }
          schedule(delay);
        })
        .catch(function () {
          // The server restarts or the network blips: try again, less often.
          delay = Math.min(delay * 2, MAX_BACKOFF_MS);
          schedule(delay);
        });
    }

    schedule(PERIOD_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("live");
    if (box && box.getAttribute("data-live") === "on") {
      start(box);
    }
  });
})();
