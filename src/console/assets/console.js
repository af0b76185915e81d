// sagad console: the only script. Refreshes the parts of a page marked data-refresh by fetching
// their URL (an HTML fragment the server escaped) every data-every milliseconds.
(function () {
  "use strict";
  function refresh(el) {
    var every = parseInt(el.getAttribute("data-every"), 10) || 5000;
    var url = el.getAttribute("data-refresh");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.redirected || r.status === 401) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html !== null) { el.innerHTML = html; } })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
  });
})();
