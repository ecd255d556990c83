// Keyboard shortcuts for the review loop on the conversations page, and "select all on this
// page". Everything works without this file; it only saves clicks.
(function () {
  "use strict";
  var rows = Array.prototype.slice.call(document.querySelectorAll("#exchanges tbody tr[data-id]"));
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      rows.forEach(function (r) { r.querySelector("input[name=ids]").checked = all.checked; });
    });
  }
  if (!rows.length) { return; }
  var at = -1;
  function focus(i) {
    if (at >= 0) { rows[at].classList.remove("focus"); }
    at = Math.max(0, Math.min(rows.length - 1, i));
    rows[at].classList.add("focus");
    rows[at].scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("keydown", function (e) {
    var tag = (e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select" || e.ctrlKey || e.metaKey || e.altKey) { return; }
    if (e.key === "j") { focus(at + 1); return; }
    if (e.key === "k") { focus(at - 1); return; }
    if (at < 0) { return; }
    var row = rows[at];
    if (e.key === "e") { row.querySelector("a.edit-link").click(); return; }
    if (e.key === "x") { var box = row.querySelector("input[name=ids]"); box.checked = !box.checked; return; }
    var button = row.querySelector("button[data-key='" + e.key + "']");
    if (button) {
      // The page reloads after the change: come back to the same place in the list (on a
      // "pending" list the reviewed row is gone, so that is the next one).
      sessionStorage.setItem("xianliao-focus", location.pathname + location.search + "#" + at);
      button.click();
    }
  });
  var saved = sessionStorage.getItem("xianliao-focus");
  sessionStorage.removeItem("xianliao-focus");
  if (saved) {
    var cut = saved.lastIndexOf("#");
    if (saved.slice(0, cut) === location.pathname + location.search) { focus(parseInt(saved.slice(cut + 1), 10)); }
  }
})();
