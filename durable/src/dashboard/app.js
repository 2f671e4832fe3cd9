// The dashboard's one script: the invocation list refreshes itself. The rows come
// from the server already escaped; this only puts them in place.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const rows = document.getElementById("rows");
  const live = rows && rows.dataset.live;
  if (!live) return;
  setInterval(async () => {
    try {
      const response = await fetch(live, { credentials: "same-origin" });
      if (response.ok) rows.innerHTML = await response.text();
    } catch (_) {
      // The server is away for a moment: the next refresh tries again.
    }
  }, 2000);
});
